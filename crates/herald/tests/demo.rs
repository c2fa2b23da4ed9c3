//! `herald demo` is the README's first command: run the real binary and
//! check that what it printed shows delivery, retries, exhaustion, a manual
//! re-send and a render failure, with every request's signature verified.

use std::process::Command;

#[test]
fn demo_delivers_retries_and_resends() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("demo")
        .output()
        .expect("run herald demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let line = |needle: &[&str]| stdout.lines().any(|l| needle.iter().all(|n| l.contains(n)));
    // The flaky CRM: two 503s with retries scheduled, then delivered on attempt 3.
    assert!(
        line(&["crm-loan-disbursed", "attempt 1", "503", "retry in"]),
        "{stdout}"
    );
    assert!(
        line(&["crm-loan-disbursed", "attempt 3", "200", "delivered"]),
        "{stdout}"
    );
    // KYC is down: retries exhausted, then an operator's manual re-send succeeds.
    assert!(
        line(&[
            "kyc-client-created",
            "attempt 4",
            "failed: reached the maximum of 4 attempts"
        ]),
        "{stdout}"
    );
    assert!(
        line(&[
            "kyc-client-created",
            "attempt 5",
            "manual",
            "200",
            "delivered"
        ]),
        "{stdout}"
    );
    // The history table, read back from the store.
    assert!(
        line(&["crm-loan-disbursed", "delivered", " 3 "]),
        "{stdout}"
    );
    assert!(
        line(&["ledger-deposit-posted", "delivered", " 1 "]),
        "{stdout}"
    );
    assert!(
        line(&["kyc-client-created", "delivered", " 5 "]),
        "{stdout}"
    );
    assert!(
        line(&[
            "collections-repayment-overdue",
            "render_failed",
            "missing field"
        ]),
        "{stdout}"
    );
    assert!(
        line(&["The receiver got 9 requests; 9 carried a valid Standard Webhooks signature."]),
        "{stdout}"
    );
}
