//! The start and stop functions `scripts/dev-up`, `dev-restart`, `dev-down` and `demo`
//! share (`scripts/lib/dev.sh`), driving the real sales binary: a service that exits
//! during start-up is reported with its error and causes, not a backtrace, and leaves no
//! pid behind; one that starts is waited for, its pid recorded where `dev-down` looks, and
//! stopped by that pid.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use system_tests::{binaries_dir, free_port, postgres_base};
use uuid::Uuid;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A state directory (as dev-up leaves `.local/dev`) whose `env` holds `settings`, the
/// binaries of this build as `DEV_TARGET`, and JSON logs with a backtrace on errors.
fn state(settings: &[(&str, String)]) -> PathBuf {
    let dir = binaries_dir()
        .join("system-tests")
        .join(format!("dev-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = binaries_dir().parent().unwrap().to_path_buf();
    let mut env = format!(
        "export DEV_TARGET='{}' LOG_FORMAT=json RUST_BACKTRACE=1\n",
        target.display()
    );
    for (k, v) in settings {
        env.push_str(&format!("export {k}='{v}'\n"));
    }
    std::fs::write(dir.join("env"), env).unwrap();
    dir
}

/// Runs `script` in bash with `scripts/lib/dev.sh` sourced and `STATE` set.
async fn dev(state: &Path, script: &str) -> std::process::Output {
    tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(". scripts/lib/dev.sh && {script}"))
        .current_dir(root())
        .env("STATE", state)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_service_that_exits_during_start_up_is_reported_with_its_error_and_causes() {
    let port = free_port();
    let state = state(&[
        ("SALES_LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("SALES_HTTP_REQUEST_TIMEOUT_MS", "soon".into()),
    ]);
    let out = dev(&state, "dev_start sales").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sales exited during start-up (exit status 1):"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  error: reading SALES_* configuration\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "    caused by: invalid value for SALES_HTTP_REQUEST_TIMEOUT_MS: invalid digit found in string\n"
        ),
        "{stderr}"
    );
    // The log holds the backtrace; the report does not.
    let log = std::fs::read_to_string(state.join("logs/sales.log")).unwrap();
    assert!(log.contains("Stack backtrace:"), "{log}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(
        stderr.lines().count() <= 5,
        "one line each, not the log: {stderr}"
    );
    assert!(!state.join("sales.pid").exists(), "no pid left behind");
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn a_started_service_is_recorded_and_stopped_by_its_pid() {
    let port = free_port();
    let database = format!("systest_dev_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let state = state(&[
        ("SALES_LISTEN_ADDR", format!("127.0.0.1:{port}")),
        (
            "SALES_DATABASE_URL",
            format!("{}/{database}", postgres_base()),
        ),
    ]);
    let out = dev(&state, "dev_start sales").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(state.join("sales.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        stdout.contains(&format!(
            "sales ready on http://127.0.0.1:{port} (pid {pid}"
        )),
        "{stdout}"
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(dev(&state, "dev_running sales").await.status.success());

    // A second start finds the port taken and leaves the running one alone.
    let again = dev(&state, "dev_start sales").await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains(&format!("port {port} (for sales) is taken"))
    );

    let out = dev(&state, "dev_stop sales").await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("stopped sales (pid {pid})\n")
    );
    assert!(!state.join("sales.pid").exists());
    // Exited: no such process, or one not yet reaped (state Z).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let process_state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .chars()
        .next();
    assert!(
        matches!(process_state, None | Some('Z')),
        "pid {pid} still runs: {stat}"
    );
    assert!(!dev(&state, "dev_running sales").await.status.success());

    let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    std::fs::remove_dir_all(&state).unwrap();
}
