//! Statuses kept in `TEXT` columns, read and written as their enums: `text_enum!(T)`
//! makes `T` (with `as_str` and `parse`) a PostgreSQL text value that refuses unknown
//! strings when decoded, so a row never turns into a status the code does not know.
//! Compile-checked queries read such a column with the type override syntax
//! (`status AS "status: T"`).

/// Implements `sqlx::Type`, `Encode` and `Decode` for PostgreSQL on an enum with
/// `fn as_str(self) -> &'static str` and `fn parse(&str) -> Option<Self>`;
/// `text_enum!(T, exact)` decodes with `T::exact` instead (for an enum whose `parse` is
/// lenient with what people type, while the column holds one spelling only).
#[macro_export]
macro_rules! text_enum {
    ($ty:ty) => {
        $crate::text_enum!($ty, parse);
    };
    ($ty:ty, $parse:ident) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $ty {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl ::sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $ty {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                <$ty>::$parse(text)
                    .ok_or_else(|| format!("unknown {} {text:?}", stringify!($ty)).into())
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::{catalog::ReservationStatus, delivery::DeliveryStatus};
    use sqlx::{Postgres, Type, postgres::PgTypeInfo};

    #[test]
    fn statuses_are_text_columns() {
        assert!(<DeliveryStatus as Type<Postgres>>::compatible(
            &PgTypeInfo::with_name("TEXT")
        ));
        assert_eq!(
            <ReservationStatus as Type<Postgres>>::type_info(),
            <String as Type<Postgres>>::type_info()
        );
    }
}
