//! What a saga is: a [`SagaDefinition`] of ordered [`Step`]s, built once at start-up.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use resilience::backoff;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// What a saga context must be: stored as JSON in `saga_instances.context`, cloned into every
/// step. Implemented for every type that qualifies.
pub trait SagaContext: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T> SagaContext for T where T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

/// What a step may reject a saga with: a value of the caller's own type, stored as JSON in
/// `saga_instances.rejection` and handed back in [`SagaEnd::Compensated`](crate::SagaEnd),
/// so the caller matches on it instead of parsing an error string. Implemented for every
/// type that qualifies.
pub trait SagaRejection:
    Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
}

impl<T> SagaRejection for T where
    T: Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
}

/// The rejection type of sagas whose steps never reject (it has no values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoRejection {}

/// Outputs of the parallel steps that succeeded so far, keyed by step name.
pub type Outputs = serde_json::Map<String, Value>;

/// How a step's action or compensation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError<R = NoRejection> {
    /// A transient failure: retried per the step's [`RetryPolicy`]; when the attempts run out the
    /// step has failed and the saga compensates. A timeout counts as one of these.
    Retryable(String),
    /// A failure retrying cannot fix: the saga compensates at once.
    Fatal(String),
    /// A typed refusal (insufficient stock, a duplicate…): like [`StepError::Fatal`], the saga
    /// compensates at once, and the outcome carries the value for the caller to match.
    Rejected(R),
    /// Stop here without compensating: the saga ends `WAITING` until someone calls
    /// [`Orchestrator::resume`](crate::Orchestrator::resume), which runs this step again. From a
    /// compensation it counts as [`StepError::Fatal`].
    Park(String),
}

impl<R: fmt::Debug> fmt::Display for StepError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retryable(e) | Self::Fatal(e) | Self::Park(e) => f.write_str(e),
            Self::Rejected(r) => write!(f, "rejected: {r:?}"),
        }
    }
}

impl<R: fmt::Debug> std::error::Error for StepError<R> {}

impl<R> StepError<R> {
    /// A [`StepError::Retryable`] from anything displayable.
    pub fn retryable(error: impl fmt::Display) -> Self {
        Self::Retryable(error.to_string())
    }

    /// A [`StepError::Fatal`] from anything displayable.
    pub fn fatal(error: impl fmt::Display) -> Self {
        Self::Fatal(error.to_string())
    }

    /// A [`StepError::Park`] from anything displayable.
    pub fn park(reason: impl fmt::Display) -> Self {
        Self::Park(reason.to_string())
    }
}

/// Which side of a saga a step's work is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// A call to something outside the saga's database (another service): its outcome is
    /// recorded together with the saga's next database write.
    Remote,
    /// Work in the saga's own database: it runs inside the transaction that records its
    /// completion (one commit for the step's writes and its checkpoint).
    Local,
}

/// What an action or a compensation is given.
#[derive(Debug, Clone)]
pub struct StepInput<C> {
    pub saga_id: Uuid,
    /// The step's name.
    pub step: &'static str,
    /// 1 for the first attempt; numbering continues across retries and resumptions.
    pub attempt: u32,
    /// The context as the last completed sequential step left it (for a compensation: as the
    /// saga left it when compensation began).
    pub context: C,
    /// Outputs of the parallel steps completed so far.
    pub outputs: Outputs,
}

impl<C> StepInput<C> {
    /// The output parallel step `step` stored, if it ran. A value that does not deserialize as
    /// `T` is an [`OutputError`], which `?` turns into a [`StepError::Fatal`].
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, OutputError> {
        self.outputs
            .get(step)
            .map(|value| serde_json::from_value(value.clone()))
            .transpose()
            .map_err(|e| OutputError(format!("output of step {step}: {e}")))
    }
}

/// A parallel step's stored output does not have the type asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutputError(String);

impl<R> From<OutputError> for StepError<R> {
    fn from(e: OutputError) -> Self {
        Self::Fatal(e.0)
    }
}

/// How often and how patiently an action or a compensation is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (0 is treated as 1).
    pub max_attempts: u32,
    /// The delay before the first retry; each later delay doubles.
    pub base_delay: Duration,
    /// The largest delay, before jitter (which keeps a delay within `[d/2, d]`).
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `max_attempts` in total, waiting `base_delay`, doubling up to `max_delay`.
    pub const fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Self {
            max_attempts,
            base_delay,
            max_delay,
        }
    }

    /// A single attempt, no retry.
    pub const fn once() -> Self {
        Self::new(1, Duration::ZERO, Duration::ZERO)
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The wait after the `failed`-th failed attempt of this run (1-based).
    pub(crate) fn delay_after(&self, failed: u32) -> Duration {
        backoff::jittered(backoff::exponential(
            failed,
            self.base_delay,
            self.max_delay,
        ))
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms then 200 ms apart (jittered), capped at 5 s.
    fn default() -> Self {
        Self::new(3, Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// The default per-attempt timeout of actions and compensations.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The default policy of compensations: more patient than actions, because a compensation that
/// runs out of attempts leaves the saga `FAILED` for a person to sort out.
pub const DEFAULT_COMPENSATION_RETRY: RetryPolicy =
    RetryPolicy::new(5, Duration::from_millis(200), Duration::from_secs(10));

/// A boxed, sendable future (what local actions and compensations return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a successful action changes.
pub(crate) enum Effect<C> {
    /// A sequential step's new context.
    Context(C),
    /// A parallel step's output, stored under its name.
    Output(Value),
}

type RemoteActionFn<C, R> =
    Arc<dyn Fn(StepInput<C>) -> BoxFuture<'static, Result<Effect<C>, StepError<R>>> + Send + Sync>;
pub(crate) type LocalActionFn<C, R> = Arc<
    dyn for<'c> Fn(StepInput<C>, &'c mut PgConnection) -> BoxFuture<'c, Result<C, StepError<R>>>
        + Send
        + Sync,
>;
type RemoteCompensationFn<C, R> =
    Arc<dyn Fn(StepInput<C>) -> BoxFuture<'static, Result<(), StepError<R>>> + Send + Sync>;
type LocalCompensationFn<C, R> = Arc<
    dyn for<'c> Fn(StepInput<C>, &'c mut PgConnection) -> BoxFuture<'c, Result<(), StepError<R>>>
        + Send
        + Sync,
>;
type ConditionFn<C> = Arc<dyn Fn(&C) -> bool + Send + Sync>;

/// A step's action, by where its work happens.
pub(crate) enum Action<C, R> {
    Remote(RemoteActionFn<C, R>),
    Local(LocalActionFn<C, R>),
}

/// A step's compensation, by where its work happens.
pub(crate) enum Compensation<C, R> {
    Remote(RemoteCompensationFn<C, R>),
    Local(LocalCompensationFn<C, R>),
}

impl<C, R> Clone for Action<C, R> {
    fn clone(&self) -> Self {
        match self {
            Self::Remote(f) => Self::Remote(Arc::clone(f)),
            Self::Local(f) => Self::Local(Arc::clone(f)),
        }
    }
}

impl<C, R> Clone for Compensation<C, R> {
    fn clone(&self) -> Self {
        match self {
            Self::Remote(f) => Self::Remote(Arc::clone(f)),
            Self::Local(f) => Self::Local(Arc::clone(f)),
        }
    }
}

/// One step of a saga: an action, optionally a compensation, a condition, a retry policy and a
/// timeout.
///
/// Actions and compensations must be idempotent: after a crash, an attempt whose outcome was not
/// yet recorded runs again.
pub struct Step<C, R = NoRejection> {
    pub(crate) name: &'static str,
    pub(crate) action: Action<C, R>,
    pub(crate) compensation: Option<Compensation<C, R>>,
    pub(crate) parallel_group: Option<&'static str>,
    pub(crate) condition: Option<ConditionFn<C>>,
    pub(crate) retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
    pub(crate) timeout: Duration,
}

impl<C: SagaContext, R: SagaRejection> Step<C, R> {
    /// A sequential remote step (a call to another service): its action returns the updated
    /// context, which later steps receive. Its outcome is recorded with the saga's next
    /// database write.
    pub fn new<F, Fut>(name: &'static str, action: F) -> Self
    where
        F: Fn(StepInput<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C, StepError<R>>> + Send + 'static,
    {
        let action = Arc::new(action);
        Self::with_action(
            name,
            None,
            Action::Remote(Arc::new(move |input| {
                let fut = action(input);
                Box::pin(async move { fut.await.map(Effect::Context) })
            })),
        )
    }

    /// A sequential local step: its action does its database work on the connection of a
    /// transaction the orchestrator opened, and returns the updated context; the step's
    /// completion (and every remote outcome not yet recorded) is written in the same
    /// transaction, which commits once. A failure rolls the step's writes back.
    ///
    /// ```ignore
    /// Step::local("record_order", |input, conn| Box::pin(async move {
    ///     sqlx::query("INSERT INTO orders …").execute(&mut *conn).await.map_err(StepError::retryable)?;
    ///     Ok(input.context)
    /// }))
    /// ```
    pub fn local<F>(name: &'static str, action: F) -> Self
    where
        F: for<'c> Fn(StepInput<C>, &'c mut PgConnection) -> BoxFuture<'c, Result<C, StepError<R>>>
            + Send
            + Sync
            + 'static,
    {
        Self::with_action(name, None, Action::Local(Arc::new(action)))
    }

    /// A step of parallel group `group`: consecutive steps of the same group run concurrently,
    /// and the saga goes on once all of them finished. They all receive the same context and
    /// cannot change it; each returns an output, stored under its name in
    /// [`StepInput::outputs`] for later steps and compensations.
    pub fn parallel<F, Fut>(name: &'static str, group: &'static str, action: F) -> Self
    where
        F: Fn(StepInput<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, StepError<R>>> + Send + 'static,
    {
        let action = Arc::new(action);
        Self::with_action(
            name,
            Some(group),
            Action::Remote(Arc::new(move |input| {
                let fut = action(input);
                Box::pin(async move { fut.await.map(Effect::Output) })
            })),
        )
    }

    fn with_action(
        name: &'static str,
        parallel_group: Option<&'static str>,
        action: Action<C, R>,
    ) -> Self {
        Self {
            name,
            action,
            compensation: None,
            parallel_group,
            condition: None,
            retry: RetryPolicy::default(),
            compensation_retry: DEFAULT_COMPENSATION_RETRY,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Undoes the action when a later step fails (or the saga is cancelled). Runs only if the
    /// action succeeded, in reverse step order, retried per [`Step::compensation_retry`].
    /// A remote compensation: its outcome is recorded with the next write.
    pub fn compensate_with<F, Fut>(mut self, compensation: F) -> Self
    where
        F: Fn(StepInput<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StepError<R>>> + Send + 'static,
    {
        self.compensation = Some(Compensation::Remote(Arc::new(move |input| {
            Box::pin(compensation(input))
        })));
        self
    }

    /// [`Step::compensate_with`] for a compensation that is database work: it runs in the
    /// transaction that records it.
    pub fn compensate_locally<F>(mut self, compensation: F) -> Self
    where
        F: for<'c> Fn(
                StepInput<C>,
                &'c mut PgConnection,
            ) -> BoxFuture<'c, Result<(), StepError<R>>>
            + Send
            + Sync
            + 'static,
    {
        self.compensation = Some(Compensation::Local(Arc::new(compensation)));
        self
    }

    /// Runs the step only if `condition` holds for the context when the step is reached;
    /// otherwise it is recorded `SKIPPED` (and never compensated).
    pub fn when(mut self, condition: impl Fn(&C) -> bool + Send + Sync + 'static) -> Self {
        self.condition = Some(Arc::new(condition));
        self
    }

    /// The action's retry policy (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The compensation's retry policy (default [`DEFAULT_COMPENSATION_RETRY`]).
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// The limit on each attempt of the action and of the compensation (default
    /// [`DEFAULT_TIMEOUT`]). An attempt that exceeds it is a [`StepError::Retryable`] failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<C, R> Step<C, R> {
    /// The step's name, unique within its saga.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The parallel group, if any.
    pub fn parallel_group(&self) -> Option<&'static str> {
        self.parallel_group
    }

    /// Where the step's action does its work.
    pub fn locality(&self) -> Locality {
        match self.action {
            Action::Remote(_) => Locality::Remote,
            Action::Local(_) => Locality::Local,
        }
    }
}

impl<C, R> Clone for Step<C, R> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            action: self.action.clone(),
            compensation: self.compensation.clone(),
            parallel_group: self.parallel_group,
            condition: self.condition.clone(),
            retry: self.retry,
            compensation_retry: self.compensation_retry,
            timeout: self.timeout,
        }
    }
}

impl<C, R> fmt::Debug for Step<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("locality", &self.locality())
            .field("parallel_group", &self.parallel_group)
            .field("compensated", &self.compensation.is_some())
            .field("conditional", &self.condition.is_some())
            .field("retry", &self.retry)
            .field("compensation_retry", &self.compensation_retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A saga type: its name (stored as `saga_type`) and its steps, in order.
///
/// By default a new saga is written (`RUNNING`, leased) before its first step, so a crash at
/// any point is recovered. [`SagaDefinition::lazy_start`] defers that write to the saga's
/// first local step, saving a transaction: a crash before it leaves no trace, which is right
/// only when the remote steps before it undo themselves (e.g. a reservation that expires).
pub struct SagaDefinition<C, R = NoRejection> {
    saga_type: &'static str,
    steps: Vec<Step<C, R>>,
    lazy_start: bool,
}

impl<C: SagaContext> SagaDefinition<C> {
    /// An empty definition of `saga_type`, whose steps never reject (see
    /// [`SagaDefinition::with_rejections`]).
    pub fn new(saga_type: &'static str) -> Self {
        Self::with_rejections(saga_type)
    }
}

impl<C: SagaContext, R: SagaRejection> SagaDefinition<C, R> {
    /// An empty definition of `saga_type` whose steps may reject with `R`
    /// ([`StepError::Rejected`]), handed back typed in the outcome.
    pub fn with_rejections(saga_type: &'static str) -> Self {
        Self {
            saga_type,
            steps: Vec::new(),
            lazy_start: false,
        }
    }

    /// Appends `step`.
    ///
    /// # Panics
    /// If a step of the same name is already defined (step names identify progress in the
    /// database), or a local step is given a parallel group (each local step is one
    /// transaction, recorded in order).
    pub fn step(mut self, step: Step<C, R>) -> Self {
        assert!(
            self.steps.iter().all(|s| s.name != step.name),
            "saga {}: step {} is defined twice",
            self.saga_type,
            step.name
        );
        assert!(
            step.parallel_group.is_none() || step.locality() == Locality::Remote,
            "saga {}: local step {} cannot be in a parallel group",
            self.saga_type,
            step.name
        );
        self.steps.push(step);
        self
    }

    /// Writes a new saga with its first local step instead of before its first step (see the
    /// type's docs).
    pub fn lazy_start(mut self) -> Self {
        self.lazy_start = true;
        self
    }
}

impl<C, R> SagaDefinition<C, R> {
    /// The saga type, as stored in `saga_instances.saga_type`.
    pub fn saga_type(&self) -> &'static str {
        self.saga_type
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step<C, R>] {
        &self.steps
    }

    /// Whether a new saga is first written with its first local step.
    pub fn starts_lazily(&self) -> bool {
        self.lazy_start
    }

    /// The steps in execution units: a sequential step alone, or a run of consecutive steps of
    /// the same parallel group.
    pub(crate) fn units(&self) -> Vec<&[Step<C, R>]> {
        let mut units = Vec::new();
        let mut start = 0;
        while start < self.steps.len() {
            let group = self.steps[start].parallel_group;
            let len = match group {
                None => 1,
                Some(g) => self.steps[start..]
                    .iter()
                    .take_while(|s| s.parallel_group == Some(g))
                    .count(),
            };
            units.push(&self.steps[start..start + len]);
            start += len;
        }
        units
    }
}

impl<C, R> Clone for SagaDefinition<C, R> {
    fn clone(&self) -> Self {
        Self {
            saga_type: self.saga_type,
            steps: self.steps.clone(),
            lazy_start: self.lazy_start,
        }
    }
}

impl<C, R> fmt::Debug for SagaDefinition<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("saga_type", &self.saga_type)
            .field("steps", &self.steps)
            .field("lazy_start", &self.lazy_start)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn seq(name: &'static str) -> Step<u32> {
        Step::new(
            name,
            |input: StepInput<u32>| async move { Ok(input.context) },
        )
    }

    fn par(name: &'static str, group: &'static str) -> Step<u32> {
        Step::parallel(name, group, |_: StepInput<u32>| async { Ok(json!(null)) })
    }

    #[test]
    fn units_group_consecutive_steps_of_one_group() {
        let def = SagaDefinition::new("t")
            .step(seq("a"))
            .step(par("b1", "g"))
            .step(par("b2", "g"))
            .step(par("c1", "h"))
            .step(seq("d"))
            .step(par("e1", "g"));
        let names: Vec<Vec<&str>> = def
            .units()
            .iter()
            .map(|u| u.iter().map(|s| s.name).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["a"],
                vec!["b1", "b2"],
                vec!["c1"],
                vec!["d"],
                vec!["e1"]
            ]
        );
    }

    #[test]
    #[should_panic(expected = "defined twice")]
    fn duplicate_step_names_are_refused() {
        let _ = SagaDefinition::new("t").step(seq("a")).step(seq("a"));
    }

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let policy = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_millis(300));
        let d1 = policy.delay_after(1);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d3 = policy.delay_after(3);
        assert!(d3 >= Duration::from_millis(150) && d3 <= Duration::from_millis(300));
        assert_eq!(
            RetryPolicy::new(0, Duration::ZERO, Duration::ZERO).attempts(),
            1
        );
    }

    #[test]
    fn outputs_deserialize_or_fail_fatally() {
        let mut outputs = Outputs::new();
        outputs.insert("r".into(), json!({"id": 7}));
        let input = StepInput {
            saga_id: Uuid::nil(),
            step: "x",
            attempt: 1,
            context: 0u32,
            outputs,
        };
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct R {
            id: u32,
        }
        assert_eq!(input.output::<R>("r"), Ok(Some(R { id: 7 })));
        assert_eq!(input.output::<R>("missing"), Ok(None));
        let wrong: Result<Option<String>, StepError> =
            input.output::<String>("r").map_err(StepError::from);
        assert!(matches!(wrong, Err(StepError::Fatal(_))));
    }
}
