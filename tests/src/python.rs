//! The bootstrap venv's Python (`HERALD_PY`, set by `scripts/test`), for
//! interop tests against the official libraries of the standards Herald
//! speaks. Without it a test skips loudly, or fails under
//! `HERALD_REQUIRE_INFRA=1`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The interpreter, if it can import `module` (installed from PyPI as
/// `package`).
pub fn python(test: &str, module: &str, package: &str) -> Option<String> {
    let required = std::env::var("HERALD_REQUIRE_INFRA").is_ok_and(|v| v == "1");
    let problem = match std::env::var("HERALD_PY") {
        Err(_) => "HERALD_PY is not set".to_owned(),
        Ok(py) => match Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .output()
        {
            Ok(out) if out.status.success() => return Some(py),
            Ok(out) => format!(
                "{py} cannot import {module}: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
            Err(e) => format!("cannot run {py}: {e}"),
        },
    };
    assert!(
        !required,
        "{test}: {problem} and HERALD_REQUIRE_INFRA=1; run `scripts/test`"
    );
    // Straight to the process's stderr: libtest captures `eprintln!`, and a
    // skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: {problem}\n\
         !!!!!!!! python3 -m venv /tmp/hpy && /tmp/hpy/bin/pip install {package}\n\
         !!!!!!!! then set HERALD_PY=/tmp/hpy/bin/python, or run everything with `scripts/test`\n"
    );
    None
}

/// Run `script` with `input` as JSON on its stdin; it answers JSON on
/// stdout.
pub fn run_python(py: &str, script: &str, input: &Value) -> Value {
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python answers JSON")
}
