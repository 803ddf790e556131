//! Line items and addresses, shared by orders, reservations and deliveries, and
//! the one text check every request's free text goes through.
//!
//! The limits here are also in the OpenAPI schemas (`#[schema(...)]` takes only
//! literals, so the attributes repeat them; `tests::schemas_carry_the_limits`
//! keeps the two equal).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::FieldError;

/// Most line items one request may carry.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one line item.
pub const MAX_QUANTITY: i32 = 10_000;
/// Longest one-line text field (names, address lines, ids), in characters.
pub const MAX_TEXT: usize = 200;

/// What a one-line text may hold: no control character (Unicode `Cc`: U+0000–U+001F,
/// U+007F–U+009F). As a JSON Schema `pattern` (ECMA-262 and Python `re` alike).
pub const LINE_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*$";
/// A one-line text that is not blank: [`LINE_PATTERN`] with at least one character
/// that is neither whitespace (as `str::trim` sees it) nor a control character.
pub const REQUIRED_LINE_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$";
/// What a multi-line text (a note, a reason) may hold: tab, line feed and carriage
/// return, but no other control character.
pub const TEXT_PATTERN: &str = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$";
/// A multi-line text that is not blank.
pub const REQUIRED_TEXT_PATTERN: &str = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$";
/// An ISO 3166-1 alpha-2 code.
pub const COUNTRY_PATTERN: &str = "^[A-Z]{2}$";

/// The shape of a text field: one line or several, required (not blank) or not,
/// and its longest length in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    pub multiline: bool,
    pub required: bool,
    pub max: usize,
}

impl TextRule {
    /// A required one-line field of at most [`MAX_TEXT`] characters.
    pub const LINE: Self = Self {
        multiline: false,
        required: true,
        max: MAX_TEXT,
    };
    /// An optional one-line field of at most [`MAX_TEXT`] characters.
    pub const OPTIONAL_LINE: Self = Self {
        multiline: false,
        required: false,
        max: MAX_TEXT,
    };

    /// A multi-line text (a note, a reason) of at most `max` characters.
    pub const fn text(required: bool, max: usize) -> Self {
        Self {
            multiline: true,
            required,
            max,
        }
    }

    /// What is wrong with `value` under this rule, if anything.
    pub fn problem(&self, value: &str) -> Option<String> {
        if let Some(c) = value.chars().find(|c| forbidden(*c, self.multiline)) {
            return Some(format!(
                "must not contain control characters (found U+{:04X})",
                c as u32
            ));
        }
        if self.required && value.trim().is_empty() {
            return Some("must not be blank".into());
        }
        if value.chars().count() > self.max {
            return Some(format!("must be at most {} characters", self.max));
        }
        None
    }

    /// Adds the problem of `value`, if any, to `errors` under `field`.
    pub fn check(&self, errors: &mut Vec<FieldError>, field: &str, value: &str) {
        if let Some(message) = self.problem(value) {
            errors.push(FieldError::new(field, message));
        }
    }
}

/// A control character that a text of this kind must not hold (a multi-line one
/// may hold tab, line feed and carriage return). NUL is always one of them:
/// PostgreSQL cannot store it in `text` or `jsonb`.
pub fn forbidden(c: char, multiline: bool) -> bool {
    c.is_control() && !(multiline && matches!(c, '\t' | '\n' | '\r'))
}

/// A product and how many units of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineItem {
    /// Product id (SKU).
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub product_id: String,
    /// Units, 1 to 10000.
    #[schema(minimum = 1, maximum = 10000)]
    pub quantity: i32,
}

/// A shipping address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Address {
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub recipient: String,
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub line2: Option<String>,
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub city: String,
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, e.g. `DE`.
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
}

/// Checks a required one-line text field: no control characters, not blank, bounded.
pub fn check_text(errors: &mut Vec<FieldError>, field: &str, value: &str) {
    TextRule::LINE.check(errors, field, value);
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
    // Items naming one product are merged: the sum obeys the same bound.
    for (i, merged) in merge_items(items).iter().enumerate() {
        if merged.quantity > MAX_QUANTITY
            && items
                .iter()
                .filter(|item| item.product_id == merged.product_id)
                .all(|item| (1..=MAX_QUANTITY).contains(&item.quantity))
        {
            let last = items
                .iter()
                .rposition(|item| item.product_id == merged.product_id)
                .unwrap_or(i);
            errors.push(FieldError::new(
                format!("{field}[{last}].quantity"),
                format!(
                    "the items of product {} add up to more than {MAX_QUANTITY} units",
                    merged.product_id
                ),
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
        if let Some(line2) = &self.line2 {
            TextRule::OPTIONAL_LINE.check(errors, &format!("{field}.line2"), line2);
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
#[allow(clippy::unwrap_used)]
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
    fn repeated_products_are_bounded_together() {
        let mut errors = Vec::new();
        check_items(
            &mut errors,
            "items",
            &[item("a", 6000), item("b", 1), item("a", 6000)],
        );
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["items[2].quantity"]);
    }

    #[test]
    fn empty_items_are_rejected() {
        let mut errors = Vec::new();
        check_items(&mut errors, "items", &[]);
        assert_eq!(errors[0].field, "items");
    }

    #[test]
    fn text_with_control_characters_is_refused() {
        let line = TextRule::LINE;
        assert_eq!(line.problem("ok"), None);
        assert!(line.problem("a\u{0}b").unwrap().contains("U+0000"));
        assert!(line.problem("a\nb").unwrap().contains("U+000A"));
        assert!(line.problem("a\u{85}b").is_some(), "C1 controls too");
        assert_eq!(line.problem(" \u{3000} ").unwrap(), "must not be blank");
        assert!(line.problem(&"x".repeat(MAX_TEXT + 1)).is_some());
        assert_eq!(
            line.problem(&"é".repeat(MAX_TEXT)),
            None,
            "characters, not bytes"
        );
        let note = TextRule::text(true, 20);
        assert_eq!(note.problem("two\r\nlines\t"), None);
        assert!(note.problem("a\u{0}").is_some());
        assert!(note.problem("\n\t").is_some(), "blank");
        assert_eq!(TextRule::text(false, 10).problem(""), None);
    }

    #[test]
    fn the_patterns_say_what_the_rules_check() {
        let samples: Vec<String> = (0u32..0x3100)
            .filter_map(char::from_u32)
            .flat_map(|c| {
                [
                    c.to_string(),
                    format!("a{c}"),
                    format!("{c} "),
                    format!("{c}{c}"),
                ]
            })
            .chain(["".to_owned(), " ".to_owned(), "\u{feff}".to_owned()])
            .collect();
        for (pattern, rule) in [
            (LINE_PATTERN, TextRule::OPTIONAL_LINE),
            (REQUIRED_LINE_PATTERN, TextRule::LINE),
            (TEXT_PATTERN, TextRule::text(false, MAX_TEXT)),
            (REQUIRED_TEXT_PATTERN, TextRule::text(true, MAX_TEXT)),
        ] {
            let re = regex::Regex::new(pattern).unwrap();
            for s in &samples {
                assert_eq!(
                    re.is_match(s),
                    rule.problem(s).is_none(),
                    "{pattern} and {rule:?} disagree on {s:?}"
                );
            }
        }
    }

    /// The `#[schema]` attributes repeat the constants (they take only literals).
    #[test]
    fn schemas_carry_the_limits() {
        let item = serde_json::to_value(<LineItem as utoipa::PartialSchema>::schema()).unwrap();
        let id = &item["properties"]["product_id"];
        assert_eq!(id["pattern"], REQUIRED_LINE_PATTERN);
        assert_eq!(id["maxLength"], MAX_TEXT);
        assert_eq!(item["properties"]["quantity"]["minimum"], 1);
        assert_eq!(item["properties"]["quantity"]["maximum"], MAX_QUANTITY);
        let address = serde_json::to_value(<Address as utoipa::PartialSchema>::schema()).unwrap();
        for field in ["recipient", "line1", "city", "postal_code"] {
            assert_eq!(
                address["properties"][field]["pattern"], REQUIRED_LINE_PATTERN,
                "{field}"
            );
            assert_eq!(
                address["properties"][field]["maxLength"], MAX_TEXT,
                "{field}"
            );
        }
        assert_eq!(address["properties"]["line2"]["pattern"], LINE_PATTERN);
        assert_eq!(address["properties"]["country"]["pattern"], COUNTRY_PATTERN);
    }

    #[test]
    fn merge_sums_repeated_products() {
        let merged = merge_items(&[item("a", 1), item("b", 2), item("a", 3)]);
        assert_eq!(merged, vec![item("a", 4), item("b", 2)]);
    }
}
