//! Start-up of a real binary: a bad setting stops it with the variable's name.
#![allow(clippy::unwrap_used)]

use system_tests::binaries_dir;

#[tokio::test]
async fn a_bad_setting_names_the_variable() {
    let output = tokio::process::Command::new(binaries_dir().join("sales"))
        .env("SALES_DATABASE_MAX_CONNECTIONS", "zero")
        .env("LOG_FORMAT", "json")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SALES_DATABASE_MAX_CONNECTIONS"),
        "stderr: {stderr}"
    );
}
