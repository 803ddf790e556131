//! Text columns read and written as Rust enums: one string per variant, and a value the
//! enum does not know is a decode error (never a default). Sales' own enums implement
//! [`TextEnum`] and get `sqlx::Type` from `text_column!`; the shared ones of `contracts`
//! travel wrapped in [`Text`].

use contracts::{
    delivery::DeliveryStatus,
    orders::{DeliveryHold, OrderStatus},
};
use sqlx::{
    Decode, Encode, Postgres, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef},
};

/// An enum stored as text.
pub trait TextEnum: Sized + Copy {
    /// What it is, for the decode error (`order status`).
    const WHAT: &'static str;
    fn as_str(self) -> &'static str;
    fn parse(s: &str) -> Option<Self>;
}

pub fn type_info() -> PgTypeInfo {
    <str as Type<Postgres>>::type_info()
}

pub fn compatible(ty: &PgTypeInfo) -> bool {
    <str as Type<Postgres>>::compatible(ty)
}

pub fn decode<T: TextEnum>(value: PgValueRef<'_>) -> Result<T, BoxDynError> {
    let s = <&str as Decode<Postgres>>::decode(value)?;
    T::parse(s).ok_or_else(|| format!("unknown {} {s:?}", T::WHAT).into())
}

pub fn encode<T: TextEnum>(value: T, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
    <&str as Encode<Postgres>>::encode(value.as_str(), buf)
}

/// `sqlx::Type`, `Encode` and `Decode` of a sales [`TextEnum`] as a text column.
macro_rules! text_column {
    ($t:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $t {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                $crate::store::text::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                $crate::store::text::compatible(ty)
            }
        }
        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $t {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                $crate::store::text::decode(value)
            }
        }
        impl sqlx::Encode<'_, sqlx::Postgres> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                $crate::store::text::encode(*self, buf)
            }
        }
    };
}
pub(crate) use text_column;

/// A shared enum (`contracts`) as a text column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text<T>(pub T);

impl<T: TextEnum> Type<Postgres> for Text<T> {
    fn type_info() -> PgTypeInfo {
        type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        compatible(ty)
    }
}

impl<'r, T: TextEnum> Decode<'r, Postgres> for Text<T> {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        decode(value).map(Text)
    }
}

impl<T: TextEnum> Encode<'_, Postgres> for Text<T> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        encode(self.0, buf)
    }
}

impl TextEnum for OrderStatus {
    const WHAT: &'static str = "order status";
    fn as_str(self) -> &'static str {
        OrderStatus::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        OrderStatus::parse(s)
    }
}

impl TextEnum for DeliveryHold {
    const WHAT: &'static str = "delivery hold";
    fn as_str(self) -> &'static str {
        DeliveryHold::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        DeliveryHold::parse(s)
    }
}

impl TextEnum for DeliveryStatus {
    const WHAT: &'static str = "delivery status";
    fn as_str(self) -> &'static str {
        DeliveryStatus::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        DeliveryStatus::parse(s)
    }
}
