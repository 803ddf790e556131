//! Building the AWS SDK configuration shared by the SNS and SQS clients.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;

/// Region used by [`emulator_sdk_config`].
pub const EMULATOR_REGION: &str = "us-east-1";

/// `SdkConfig` from the standard AWS environment: `AWS_ENDPOINT_URL` (point it at the emulator
/// locally), `AWS_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, and so on.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// `SdkConfig` for an SNS/SQS emulator (LocalStack) at `endpoint_url`, whatever the environment
/// says: region [`EMULATOR_REGION`] and the static `test`/`test` credentials the emulator accepts.
/// Meant for tests and tools that must never reach real AWS.
pub async fn emulator_sdk_config(endpoint_url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint_url)
        .region(Region::new(EMULATOR_REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, "emulator"))
        .load()
        .await
}

/// Counts one request to the broker, `broker_requests_total{operation}` (`PublishBatch`,
/// `ReceiveMessage`, `DeleteMessageBatch`, `ChangeMessageVisibility`), whatever its
/// outcome: SNS and SQS bill per request, and an emulator's CPU follows them.
pub(crate) fn count_request(operation: &'static str) {
    metrics::counter!("broker_requests_total", "operation" => operation).increment(1);
}

/// The last path segment of a queue URL, i.e. the queue's name (for logs).
pub fn queue_name_from_url(queue_url: &str) -> &str {
    queue_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(queue_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_name_is_the_last_segment() {
        assert_eq!(
            queue_name_from_url("http://127.0.0.1:4566/queue/us-east-1/000000000000/sales-events"),
            "sales-events"
        );
        assert_eq!(
            queue_name_from_url("https://sqs.us-east-1.amazonaws.com/123456789012/q-dlq/"),
            "q-dlq"
        );
        assert_eq!(queue_name_from_url("q"), "q");
    }
}
