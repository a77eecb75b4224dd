//! turnd's process contract: the config file is checked, listeners are
//! logged, SIGTERM ends the process cleanly.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn sigterm_exits_cleanly() {
    let mut turnd = TurndProcess::with_transports(&["udp", "udp"]);
    let ports: Vec<u16> = turnd.listeners().iter().filter(|(t, _)| t == "udp").map(|(_, a)| a.port()).collect();
    assert!(ports.len() == 2 && ports[0] != 0 && ports[1] != 0 && ports[0] != ports[1], "{ports:?}");
    let status = turnd.terminate(Duration::from_secs(5)).expect("turnd did not exit within 5 s of SIGTERM");
    assert!(status.success(), "turnd exited with {status} on SIGTERM:\n{}", turnd.logs());
}

#[test]
fn unknown_config_key_is_an_error() {
    let dir = TempDir::new("turnd-cli");
    let config = config_with(&["udp"]).replace("realm =", "no-such-key = 1\nrealm =");
    let file = dir.write("bad.toml", &config);
    let out = run_with_timeout(Command::new(turnd_binary()).arg("serve").arg("-c").arg(&file), Duration::from_secs(10));
    assert!(!out.timed_out(), "turnd kept running with an unknown key:\n{out}");
    assert!(!out.success(), "turnd accepted an unknown key:\n{out}");
    assert!(out.all().contains("no-such-key"), "error does not name the key:\n{out}");
}

#[test]
fn a_mistyped_secret_is_named_but_never_quoted() {
    let dir = TempDir::new("turnd-cli");
    for (bad, key) in [
        ("[auth]\nsecrets = \"hunter2-north\"\n", "secrets"),
        ("[[auth.user]]\nname = \"bob\"\npassword = 91827364\n", "password"),
    ] {
        let file = dir.write("bad.toml", bad);
        let out =
            run_with_timeout(Command::new(turnd_binary()).arg("check-config").arg(&file), Duration::from_secs(10));
        assert!(!out.success(), "{out}");
        assert!(out.all().contains(&format!("`{key}`")), "the key is not named:\n{out}");
        assert!(out.all().contains(":2:") || out.all().contains(":3:"), "the line is not named:\n{out}");
        assert!(!out.all().contains("hunter2") && !out.all().contains("91827364"), "the secret was printed:\n{out}");
    }
}

#[test]
fn credentials_refuse_an_empty_secret_and_a_ttl_that_would_wrap() {
    for (args, says) in [
        (vec!["--secret", ""], "--secret is empty"),
        (vec!["--secret", "s", "--ttl", "600000000years"], "--ttl must be"),
        (vec!["--secret", "s", "--ttl", "0s"], "--ttl must be"),
    ] {
        let out =
            run_with_timeout(Command::new(turnd_binary()).arg("credentials").args(&args), Duration::from_secs(10));
        assert!(!out.success() && out.stderr.contains(says), "{args:?}:\n{out}");
        assert!(out.stdout.is_empty(), "{args:?} minted something:\n{out}");
    }
    let out = run_with_timeout(
        Command::new(turnd_binary()).args(["credentials", "--secret", "s", "--ttl", "3650days"]),
        Duration::from_secs(10),
    );
    assert!(out.success(), "{out}");
}
