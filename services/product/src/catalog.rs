//! The catalog: listing and reading products, staff adding products and setting
//! stock, and the read-only availability check.

use axum::{Router, http::StatusCode, routing::get, routing::post, routing::put};
use contracts::{
    FieldError, Problem,
    catalog::{
        AvailabilityRequest, AvailabilityResponse, ItemAvailability, NewProduct, Product,
        StockUpdate,
    },
    common::merge_items,
};
use platform::{
    ApiResult,
    auth::Staff,
    ensure_valid,
    extract::{Json, Path},
};
use sqlx::PgPool;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/products", get(list_products).post(create_product))
        .route("/products/{id}", get(get_product))
        .route("/products/{id}/stock", put(set_stock))
        .route("/availability/check", post(check_availability))
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: String,
    name: String,
    price_cents: i64,
    stock_on_hand: i32,
    reserved: i32,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product {
            available: r.stock_on_hand - r.reserved,
            id: r.id,
            name: r.name,
            price_cents: r.price_cents,
            stock_on_hand: r.stock_on_hand,
            reserved: r.reserved,
        }
    }
}

/// Reads one product.
pub async fn find_product(pool: &PgPool, id: &str) -> Result<Option<Product>, sqlx::Error> {
    let row = sqlx::query_as!(
        ProductRow,
        "SELECT id, name, price_cents, stock_on_hand, reserved FROM products WHERE id = $1",
        id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Product::from))
}

/// List the catalog, ordered by id.
#[utoipa::path(get, path = "/products", tag = "catalog",
    responses((status = 200, body = Vec<Product>)))]
pub async fn list_products(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> ApiResult<Json<Vec<Product>>> {
    let rows = sqlx::query_as!(
        ProductRow,
        "SELECT id, name, price_cents, stock_on_hand, reserved FROM products ORDER BY id"
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.into_iter().map(Product::from).collect()))
}

/// Read one product with its stock.
#[utoipa::path(get, path = "/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id (SKU)", max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")),
    responses((status = 200, body = Product), (status = 404, body = Problem)))]
pub async fn get_product(
    axum::extract::State(state): axum::extract::State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Product>> {
    find_product(&state.pool, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(&format!("product {id}")).into())
}

/// Add a product (staff).
#[utoipa::path(post, path = "/products", tag = "catalog", request_body = NewProduct,
    security(("staff" = [])),
    responses((status = 201, body = Product), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem, description = "A product with this id exists"),
        (status = 422, body = Problem)))]
pub async fn create_product(
    axum::extract::State(state): axum::extract::State<AppState>,
    _staff: Staff,
    Json(new): Json<NewProduct>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    ensure_valid(new.validate())?;
    let result = sqlx::query_as!(
        ProductRow,
        "INSERT INTO products (id, name, price_cents, stock_on_hand) VALUES ($1, $2, $3, $4)
         RETURNING id, name, price_cents, stock_on_hand, reserved",
        new.id.trim(),
        new.name.trim(),
        new.price_cents,
        new.stock_on_hand,
    )
    .fetch_one(&state.pool)
    .await;
    match result {
        Ok(row) => Ok((StatusCode::CREATED, Json(row.into()))),
        Err(e) if platform::db::violated_constraint(&e) == Some("products_pkey") => {
            Err(Problem::conflict(
                "product-exists",
                format!("product {} already exists", new.id),
            )
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Set a product's stock on hand (staff), e.g. after a delivery from a supplier.
/// It cannot go below the units currently reserved.
#[utoipa::path(put, path = "/products/{id}/stock", tag = "catalog", request_body = StockUpdate,
    params(("id" = String, Path, description = "Product id (SKU)", max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")),
    security(("staff" = [])),
    responses((status = 200, body = Product), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Below the reserved units"),
        (status = 422, body = Problem)))]
pub async fn set_stock(
    axum::extract::State(state): axum::extract::State<AppState>,
    _staff: Staff,
    Path(id): Path<String>,
    Json(update): Json<StockUpdate>,
) -> ApiResult<Json<Product>> {
    ensure_valid(update.validate())?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query_as!(
        ProductRow,
        "SELECT id, name, price_cents, stock_on_hand, reserved FROM products WHERE id = $1
         FOR UPDATE",
        id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Problem::not_found(&format!("product {id}")).into());
    };
    if update.stock_on_hand < row.reserved {
        return Err(Problem::conflict(
            "stock-below-reserved",
            format!(
                "{} units are reserved; stock on hand cannot be set to {}",
                row.reserved, update.stock_on_hand
            ),
        )
        .into());
    }
    let row = sqlx::query_as!(
        ProductRow,
        "UPDATE products SET stock_on_hand = $2, updated_at = now() WHERE id = $1
         RETURNING id, name, price_cents, stock_on_hand, reserved",
        id,
        update.stock_on_hand,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(product_id = %id, stock_on_hand = update.stock_on_hand, "stock set by staff");
    Ok(Json(row.into()))
}

/// Would these items be available now? Read-only: holds nothing.
#[utoipa::path(post, path = "/availability/check", tag = "catalog",
    request_body = AvailabilityRequest,
    responses((status = 200, body = AvailabilityResponse), (status = 422, body = Problem)))]
pub async fn check_availability(
    axum::extract::State(state): axum::extract::State<AppState>,
    Json(request): Json<AvailabilityRequest>,
) -> ApiResult<Json<AvailabilityResponse>> {
    ensure_valid(request.validate())?;
    let items = merge_items(&request.items);
    let ids: Vec<&str> = items.iter().map(|i| i.product_id.as_str()).collect();
    let stock: Vec<(String, i32)> = sqlx::query!(
        r#"SELECT id, stock_on_hand - reserved AS "available!" FROM products
           WHERE id = ANY($1::text[])"#,
        &ids as &[&str],
    )
    .fetch_all(&state.pool)
    .await?
    .into_iter()
    .map(|row| (row.id, row.available))
    .collect();
    let items: Vec<ItemAvailability> = items
        .into_iter()
        .map(|item| {
            let available = stock
                .iter()
                .find(|(id, _)| *id == item.product_id)
                .map_or(0, |(_, a)| *a);
            ItemAvailability {
                sufficient: available >= item.quantity,
                product_id: item.product_id,
                requested: item.quantity,
                available,
            }
        })
        .collect();
    Ok(Json(AvailabilityResponse {
        available: items.iter().all(|i| i.sufficient),
        items,
    }))
}

/// 422 naming each item whose product does not exist.
pub fn unknown_products(requested: &[String], known: &[String]) -> Vec<FieldError> {
    requested
        .iter()
        .enumerate()
        .filter(|(_, id)| !known.contains(id))
        .map(|(i, id)| {
            FieldError::new(
                format!("items[{i}].product_id"),
                format!("unknown product {id}"),
            )
        })
        .collect()
}
