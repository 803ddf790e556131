//! `GET /sagas/{id}` (staff): a saga with its steps.

use uuid::Uuid;

use super::AppState;
use crate::store;

/// A saga with its steps (staff). The order saga's id is its order's id, so an order's
/// saga is `GET /sagas/{order_id}`; an order whose saga was given another id (placed
/// before sagas took their order's id) is found by its order id too (`store::sagas::saga_of`).
#[utoipa::path(get, path = "/sagas/{id}", tag = "sagas", security(("staff" = [])),
    params(("id" = Uuid, Path, description = "The saga's id; an order's saga has the order's id")),
    responses((status = 200, body = saga::store::SagaView), (status = 401, body = contracts::Problem),
        (status = 403, body = contracts::Problem), (status = 404, body = contracts::Problem)))]
pub async fn get_saga(
    axum::extract::State(state): axum::extract::State<AppState>,
    _staff: platform::auth::Staff,
    platform::extract::Path(id): platform::extract::Path<Uuid>,
) -> platform::ApiResult<platform::extract::Json<saga::store::SagaView>> {
    state
        .db
        .guard(async {
            let mut loaded = saga::store::load(&state.db.pool, id).await;
            if matches!(loaded, Ok(None))
                && let Some(saga_id) = store::sagas::saga_of(&state.db.pool, id).await?
            {
                loaded = saga::store::load(&state.db.pool, saga_id).await;
            }
            match loaded {
                Ok(Some(view)) => Ok(platform::extract::Json(view)),
                Ok(None) => Err(contracts::Problem::not_found(&format!("saga {id}")).into()),
                Err(saga::Error::Database(e)) => Err(e.into()),
                Err(e) => {
                    tracing::error!(saga_id = %id, error = %e, "saga unreadable");
                    Err(contracts::Problem::internal().into())
                }
            }
        })
        .await
}
