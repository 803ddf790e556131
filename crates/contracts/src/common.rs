//! Line items and addresses, shared by orders, reservations and deliveries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::FieldError;

/// Most line items one request may carry.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one line item.
pub const MAX_QUANTITY: i32 = 10_000;
/// Longest free-text field (names, address lines, ids).
pub const MAX_TEXT: usize = 200;

/// A product and how many units of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineItem {
    /// Product id (SKU).
    pub product_id: String,
    /// Units, at least 1.
    pub quantity: i32,
}

/// A shipping address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Address {
    pub recipient: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, e.g. `DE`.
    pub country: String,
}

/// Checks a free-text field: present, not blank, bounded.
pub fn check_text(errors: &mut Vec<FieldError>, field: &str, value: &str) {
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be blank"));
    } else if value.chars().count() > MAX_TEXT {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_TEXT} characters"),
        ));
    }
}

/// Checks a list of line items: 1..=MAX_ITEMS, each with a product id and a quantity in range.
pub fn check_items(errors: &mut Vec<FieldError>, field: &str, items: &[LineItem]) {
    if items.is_empty() {
        errors.push(FieldError::new(field, "must contain at least one item"));
    } else if items.len() > MAX_ITEMS {
        errors.push(FieldError::new(
            field,
            format!("must contain at most {MAX_ITEMS} items"),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        check_text(
            errors,
            &format!("{field}[{i}].product_id"),
            &item.product_id,
        );
        if item.quantity < 1 {
            errors.push(FieldError::new(
                format!("{field}[{i}].quantity"),
                "must be at least 1",
            ));
        } else if item.quantity > MAX_QUANTITY {
            errors.push(FieldError::new(
                format!("{field}[{i}].quantity"),
                format!("must be at most {MAX_QUANTITY}"),
            ));
        }
    }
}

/// Merges line items naming the same product, keeping first-seen order.
pub fn merge_items(items: &[LineItem]) -> Vec<LineItem> {
    let mut merged: Vec<LineItem> = Vec::with_capacity(items.len());
    for item in items {
        match merged.iter_mut().find(|m| m.product_id == item.product_id) {
            Some(m) => m.quantity = m.quantity.saturating_add(item.quantity),
            None => merged.push(item.clone()),
        }
    }
    merged
}

impl Address {
    pub fn check(&self, errors: &mut Vec<FieldError>, field: &str) {
        check_text(errors, &format!("{field}.recipient"), &self.recipient);
        check_text(errors, &format!("{field}.line1"), &self.line1);
        if let Some(line2) = &self.line2
            && line2.chars().count() > MAX_TEXT
        {
            errors.push(FieldError::new(
                format!("{field}.line2"),
                format!("must be at most {MAX_TEXT} characters"),
            ));
        }
        check_text(errors, &format!("{field}.city"), &self.city);
        check_text(errors, &format!("{field}.postal_code"), &self.postal_code);
        if self.country.len() != 2 || !self.country.chars().all(|c| c.is_ascii_uppercase()) {
            errors.push(FieldError::new(
                format!("{field}.country"),
                "must be an ISO 3166-1 alpha-2 code such as DE",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, q: i32) -> LineItem {
        LineItem {
            product_id: id.into(),
            quantity: q,
        }
    }

    #[test]
    fn items_report_every_bad_field() {
        let mut errors = Vec::new();
        check_items(
            &mut errors,
            "items",
            &[item("", 0), item("a", MAX_QUANTITY + 1)],
        );
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "items[0].product_id",
                "items[0].quantity",
                "items[1].quantity"
            ]
        );
    }

    #[test]
    fn empty_items_are_rejected() {
        let mut errors = Vec::new();
        check_items(&mut errors, "items", &[]);
        assert_eq!(errors[0].field, "items");
    }

    #[test]
    fn merge_sums_repeated_products() {
        let merged = merge_items(&[item("a", 1), item("b", 2), item("a", 3)]);
        assert_eq!(merged, vec![item("a", 4), item("b", 2)]);
    }
}
