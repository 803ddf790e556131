//! The demo catalog a development stack starts with (`PRODUCT_SEED_DEMO_CATALOG=true`).

use sqlx::PgPool;

/// (id, name, price in cents, stock on hand)
pub const DEMO_PRODUCTS: &[(&str, &str, i64, i32)] = &[
    ("SKU-KEYBOARD", "Mechanical keyboard", 8_900, 500),
    ("SKU-MOUSE", "Wireless mouse", 2_900, 1_000),
    ("SKU-MONITOR", "27-inch monitor", 24_900, 200),
    ("SKU-DOCK", "USB-C dock", 12_900, 300),
    ("SKU-HEADSET", "Noise-cancelling headset", 17_900, 150),
];

/// Inserts the demo products that are missing; existing rows are left alone.
pub async fn seed(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = DEMO_PRODUCTS.iter().map(|p| p.0).collect();
    let names: Vec<&str> = DEMO_PRODUCTS.iter().map(|p| p.1).collect();
    let prices: Vec<i64> = DEMO_PRODUCTS.iter().map(|p| p.2).collect();
    let stock: Vec<i32> = DEMO_PRODUCTS.iter().map(|p| p.3).collect();
    let inserted = sqlx::query!(
        "INSERT INTO products (id, name, price_cents, stock_on_hand)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[])
         ON CONFLICT (id) DO NOTHING",
        &ids as &[&str],
        &names as &[&str],
        &prices,
        &stock,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted)
}
