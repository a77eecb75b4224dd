//! `turnd ctl` against the real binary, through real sockets: status, sessions (table,
//! JSON, filters), drop, revoke/unrevoke, reload, drain, where the token comes from,
//! the exit codes, and shell completion.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::http;
use common::turn_client;

use common::*;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use turn_client::TurnClient;

const TOKEN: &str = "ctl-test-token-0123456789";
const BOB: &str = "bob";
const BOB_PASSWORD: &str = "bob-secret";
/// How long one `turnd ctl` may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(20);

/// A loopback UDP turnd with `alice` and `bob`, an ephemeral admin listener with a token,
/// and `top` (top-level keys such as `drain-time`).
fn start(top: &str) -> TurndProcess {
    let config = format!(
        "{top}\n{}\n[[auth.user]]\nname = \"{BOB}\"\npassword = \"{BOB_PASSWORD}\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        config_with(&["udp"])
    );
    TurndProcess::start(&config, &[])
}

/// `turnd ctl --admin ADDR ARGS...` with `env` and nothing inherited that would point it
/// elsewhere.
fn ctl_env(admin: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut command = Command::new(turnd_binary());
    command.arg("ctl").arg("--admin").arg(admin.to_string()).args(args);
    for var in
        ["TURND_ADMIN_TOKEN", "TURND_ADMIN_TOKEN_FILE", "TURND_CONFIG", "TURND_ADMIN_ADDRESS", "CREDENTIALS_DIRECTORY"]
    {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let out = run_with_timeout(&mut command, CTL_TIMEOUT);
    assert!(!out.timed_out(), "turnd ctl hung:\n{out}");
    out
}

/// `turnd ctl` with the token in `$TURND_ADMIN_TOKEN`.
fn ctl(admin: SocketAddr, args: &[&str]) -> CmdOutput {
    ctl_env(admin, args, &[("TURND_ADMIN_TOKEN", TOKEN)])
}

/// `ctl`, asserting exit code 0; its stdout.
fn ok(admin: SocketAddr, args: &[&str]) -> String {
    let out = ctl(admin, args);
    assert_eq!(out.code(), Some(0), "{out}");
    out.stdout
}

/// `sessions --json ARGS`, parsed.
fn sessions_json(admin: SocketAddr, args: &[&str]) -> Vec<Value> {
    let text = ok(admin, &[&["sessions", "--json"], args].concat());
    serde_json::from_str::<Value>(&text).expect("JSON").as_array().expect("an array").clone()
}

/// The users of `list`, sorted (the list is ordered by id, which workers hand out).
fn users(list: &[Value]) -> Vec<&str> {
    let mut users: Vec<&str> = list.iter().map(|a| a["user"].as_str().unwrap()).collect();
    users.sort();
    users
}

/// A client of `user` from `local` with an allocation; returns it and its address as
/// the server saw it.
fn allocated(turnd: &TurndProcess, local: &str, user: &str, password: &str) -> (TurnClient, SocketAddr) {
    let mut client = TurnClient::new(local, turnd.udp_addr(), user, password, REALM);
    let (_, mapped) = client.allocate(vec![]).unwrap_or_else(|code| panic!("{user} could not allocate: {code}"));
    (client, mapped)
}

/// The config file the harness wrote (the `-c` argument of the child).
fn config_path(turnd: &TurndProcess) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", turnd.pid())).expect("cmdline");
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let i = args.iter().position(|a| a == "-c").expect("-c");
    args[i + 1].clone().into()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An address where nothing listens.
fn nothing_listening() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn sessions_lists_filters_and_drops() {
    let turnd = start("");
    let admin = turnd.admin_addr();
    let (_a1, alice1) = allocated(&turnd, "127.0.0.1:0", USER, PASSWORD);
    let (_a2, alice2) = allocated(&turnd, "127.0.0.1:0", USER, PASSWORD);
    let (_b, bob) = allocated(&turnd, "127.0.0.2:0", BOB, BOB_PASSWORD);

    // The table: a header, one row per allocation, a count.
    let table = ok(admin, &["sessions"]);
    eprintln!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  USER") && lines[0].contains("CLIENT") && lines[0].contains("RELAY"), "{table}");
    assert!(lines[0].contains("AGE") && lines[0].contains("EXPIRES IN") && lines[0].contains("TO PEER"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    for (addr, user) in [(alice1, USER), (alice2, USER), (bob, BOB)] {
        let row = lines.iter().find(|l| l.contains(&addr.to_string())).unwrap_or_else(|| panic!("{addr}:\n{table}"));
        assert!(row.contains(user) && row.contains("udp") && row.contains("0 B"), "{row}");
    }
    assert_eq!(lines[4], "3 allocations", "{table}");

    // JSON, and the filters.
    let all = sessions_json(admin, &[]);
    assert_eq!(users(&all), [USER, USER, BOB], "{all:?}");
    let ids: Vec<u64> = all.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not ordered by id: {ids:?}");
    for a in &all {
        for key in
            ["id", "client", "relay", "transport", "age_secs", "expires_in_secs", "bytes_to_peer", "bytes_to_client"]
        {
            assert!(!a[key].is_null(), "{key} missing: {a}");
        }
    }
    assert_eq!(users(&sessions_json(admin, &["--user", BOB])), [BOB]);
    assert_eq!(users(&sessions_json(admin, &["--client", "127.0.0.2"])), [BOB]);
    assert_eq!(users(&sessions_json(admin, &["--client", "127.0.0.1", "--user", USER])), [USER, USER]);
    let one = sessions_json(admin, &["--client", &alice2.to_string()]);
    assert_eq!((one.len(), one[0]["client"].as_str()), (1, Some(alice2.to_string().as_str())), "{one:?}");
    let filtered = ok(admin, &["sessions", "--user", BOB]);
    assert!(filtered.ends_with("1 of 3 allocations match\n") && !filtered.contains(USER), "{filtered}");
    assert!(sessions_json(admin, &["--user", "nobody"]).is_empty());

    // Drop by id: gone; the same id again is an error that says so.
    let id = one[0]["id"].as_u64().unwrap().to_string();
    assert_eq!(ok(admin, &["drop", &id]), format!("dropped allocation {id}\n"));
    assert_eq!(users(&sessions_json(admin, &[])), [USER, BOB]);
    let again = ctl(admin, &["drop", &id]);
    assert_eq!(again.code(), Some(1), "{again}");
    assert!(again.stderr.contains(&format!("no allocation {id}")), "{again}");

    // Drop by user.
    assert_eq!(ok(admin, &["drop", "--user", BOB]), "dropped 1 allocation of bob\n");
    assert_eq!(users(&sessions_json(admin, &[])), [USER]);
    let none = ctl(admin, &["drop", "--user", BOB]);
    assert_eq!(none.code(), Some(1), "{none}");
    assert!(none.stderr.contains("bob has no allocations"), "{none}");

    // Usage errors are 2.
    let usage = ctl(admin, &["drop"]);
    assert_eq!(usage.code(), Some(2), "{usage}");
    let usage = ctl(admin, &["sessions", "--client", "not-an-ip"]);
    assert_eq!(usage.code(), Some(2), "{usage}");
}

#[test]
fn revoke_refuses_a_user_until_unrevoke() {
    let mut turnd = start("");
    let admin = turnd.admin_addr();
    let (_alice, _) = allocated(&turnd, "127.0.0.1:0", USER, PASSWORD);
    let (_bob, _) = allocated(&turnd, "127.0.0.1:0", BOB, BOB_PASSWORD);

    let revoked = ok(admin, &["revoke", USER]);
    assert!(revoked.starts_with("revoked alice: 1 allocation ended;"), "{revoked}");
    assert_eq!(users(&sessions_json(admin, &[])), [BOB]);
    let mut client = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    assert_eq!(client.allocate(vec![]).err(), Some(401), "a revoked user allocated");
    assert_eq!(ok(admin, &["revocations"]), "USER   LAPSES\nalice  until lifted\n");
    let listed: Value = serde_json::from_str(&ok(admin, &["revocations", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([{"user": "alice", "lapses_at": null}]));

    assert_eq!(ok(admin, &["unrevoke", USER]), "lifted the revocation of alice\n");
    assert!(client.allocate(vec![]).is_ok(), "alice still refused after unrevoke");
    assert_eq!(ok(admin, &["revocations"]), "no revocations\n");
    // reload and drain, like every admin action, need the token, even on loopback.
    let mut ws = http::ws_connect(admin, "/ws", &[]).expect("/ws without a token on loopback");
    for op in ["reload", "drain"] {
        http::ws_send(&mut ws, serde_json::json!({"op": op, "req": 9}));
        let reply = http::ws_wait(&mut ws, Duration::from_secs(5), |m| m["req"] == 9);
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("unauthorized")), "{reply}");
    }
    assert!(turnd.is_running() && !turnd.logs().contains("raising"), "{}", turnd.logs());
    let twice = ctl(admin, &["unrevoke", USER]);
    assert_eq!(twice.code(), Some(1), "{twice}");
    assert!(twice.stderr.contains("alice was not revoked"), "{twice}");
}

#[test]
fn status_tokens_and_exit_codes() {
    let turnd = start("");
    let admin = turnd.admin_addr();
    let (_alice, _) = allocated(&turnd, "127.0.0.1:0", USER, PASSWORD);

    // status reads the stats feed (a second behind at most) and /readyz.
    let mut status = String::new();
    wait_until("status showing the allocation", Duration::from_secs(5), || {
        status = ok(admin, &["status"]);
        // (The allocation count and the port ledger can show a second apart.)
        status.contains("allocations:       1\n") && status.contains("relay ports:       1 in use, 199 free")
    });
    eprintln!("{status}");
    for want in ["readiness:         ready", "relay ports:       1 in use, 199 free", "draining:          no", "turnd/"]
    {
        assert!(status.contains(want), "{want:?} missing:\n{status}");
    }
    let json: Value = serde_json::from_str(&ok(admin, &["status", "--json"])).unwrap();
    assert_eq!((json["ready"].as_bool(), json["stats"]["allocations"].as_u64()), (Some(true), Some(1)), "{json}");
    // On loopback, status needs no token; sessions does.
    let open = ctl_env(admin, &["status"], &[]);
    assert_eq!(open.code(), Some(0), "{open}");
    let missing = ctl_env(admin, &["sessions"], &[]);
    assert_eq!(missing.code(), Some(4), "{missing}");
    assert!(missing.stderr.contains("none found in --token-file, $TURND_ADMIN_TOKEN"), "{missing}");

    // A wrong token: 4, naming where it came from and never quoting it.
    let wrong = "wrong-token-9876543210";
    let out = ctl_env(admin, &["status"], &[("TURND_ADMIN_TOKEN", wrong)]);
    assert_eq!(out.code(), Some(4), "{out}");
    assert!(out.stderr.contains("refused the admin token from $TURND_ADMIN_TOKEN"), "{out}");
    let dir = TempDir::new("turnd-ctl");
    let bad_file = dir.write("bad-token", &format!("{wrong}\n"));
    let out = ctl_env(admin, &["sessions", "--token-file", bad_file.to_str().unwrap()], &[]);
    assert_eq!(out.code(), Some(4), "{out}");
    assert!(out.stderr.contains(&format!("from --token-file {}", bad_file.display())), "{out}");
    assert!(!out.all().contains(wrong), "the token was printed:\n{out}");

    // The right token from a file (with its newline), from the environment, from a
    // systemd credential, and from the config file.
    let file = dir.write("token", &format!("{TOKEN}\n"));
    let out = ctl_env(admin, &["sessions", "--token-file", file.to_str().unwrap()], &[]);
    assert_eq!(out.code(), Some(0), "{out}");
    let out = ctl_env(admin, &["sessions"], &[("TURND_ADMIN_TOKEN_FILE", file.to_str().unwrap())]);
    assert_eq!(out.code(), Some(0), "{out}");
    dir.write("admin-token", TOKEN);
    let out = ctl_env(admin, &["sessions"], &[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
    assert_eq!(out.code(), Some(0), "{out}");
    let config = config_path(&turnd);
    let out = ctl_env(admin, &["sessions", "-c", config.to_str().unwrap()], &[]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(!out.all().contains(TOKEN), "the token was printed:\n{out}");
    // --token-file wins over the environment.
    let out =
        ctl_env(admin, &["sessions", "--token-file", bad_file.to_str().unwrap()], &[("TURND_ADMIN_TOKEN", TOKEN)]);
    assert_eq!(out.code(), Some(4), "{out}");

    // Nothing listening: 3, saying so.
    let nowhere = nothing_listening();
    let out = ctl(nowhere, &["status"]);
    assert_eq!(out.code(), Some(3), "{out}");
    assert!(out.stderr.contains(&format!("turnd is not running at {nowhere}")), "{out}");
    let out = ctl(nowhere, &["sessions"]);
    assert_eq!(out.code(), Some(3), "{out}");
}

#[test]
fn reload_takes_a_new_user() {
    let turnd = start("");
    let admin = turnd.admin_addr();
    let path = config_path(&turnd);
    let carol = |turnd: &TurndProcess| {
        TurnClient::new("127.0.0.1:0", turnd.udp_addr(), "carol", "carol-secret", REALM).allocate(vec![])
    };
    assert_eq!(carol(&turnd).err(), Some(401));

    // A broken file is caught here and not sent for.
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{original}\nno-such-key = 1\n")).unwrap();
    let out = ctl(admin, &["reload", "-c", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("not reloading") && out.stderr.contains("no-such-key"), "{out}");
    assert!(!turnd.logs().contains("admin: reload asked for"), "a bad file was sent for");

    std::fs::write(&path, format!("{original}\n[[auth.user]]\nname = \"carol\"\npassword = \"carol-secret\"\n"))
        .unwrap();
    let out = ok(admin, &["reload", "-c", path.to_str().unwrap()]);
    assert!(out.contains("is reloading (SIGHUP)"), "{out}");
    wait_until("carol allocating after the reload", Duration::from_secs(5), || carol(&turnd).is_ok());
    // Without -c the file is not checked here, and the reload still happens.
    assert!(ok(admin, &["reload"]).contains("pass --config to check it here first"));
    wait_until("a second reload", Duration::from_secs(5), || {
        turnd.logs().matches("configuration reloaded").count() >= 2
    });
}

#[test]
fn drain_refuses_new_allocations_and_exits_when_empty() {
    let mut turnd = start("drain-time = \"60s\"");
    let admin = turnd.admin_addr();
    let (_alice, _) = allocated(&turnd, "127.0.0.1:0", USER, PASSWORD);

    let out = ok(admin, &["drain"]);
    assert!(out.contains("is draining (SIGTERM)"), "{out}");
    wait_until("the drain", Duration::from_secs(5), || turnd.logs().contains("SIGTERM: draining"));
    let mut bob = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), BOB, BOB_PASSWORD, REALM);
    assert_eq!(bob.allocate(vec![]).err(), Some(508), "a new allocation while draining");
    // A second drain does not turn into "exit now".
    assert!(ok(admin, &["drain"]).contains("already draining"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(turnd.is_running(), "a second drain made turnd exit");
    // status: not ready (exit 1), draining.
    let mut status = ctl(admin, &["status"]);
    wait_until("status showing the drain", Duration::from_secs(5), || {
        status = ctl(admin, &["status"]);
        status.stdout.contains("draining:          yes")
    });
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(status.stdout.contains("not ready: draining") && status.stderr.contains("is not ready"), "{status}");

    // The last allocation goes: turnd exits, cleanly.
    ok(admin, &["drop", "--user", USER]);
    let exited = turnd.stop_with(0, Duration::from_secs(10)).expect("turnd did not exit once empty");
    assert!(exited.success(), "{exited}");
    assert_eq!(ctl(admin, &["status"]).code(), Some(3));
}

#[test]
fn drain_wait_follows_turnd_until_drain_time_ends_it() {
    let turnd = start("drain-time = \"3s\"");
    let admin = turnd.admin_addr();
    let (_alice, _) = allocated(&turnd, "127.0.0.1:0", USER, PASSWORD);
    let started = Instant::now();
    let out = ok(admin, &["drain", "--wait"]);
    assert!(out.contains("1 allocation left\n") && out.ends_with("turnd has exited\n"), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(2), "exited before drain-time: {out}");
}

#[test]
fn completions_are_generated_by_clap() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_with_timeout(Command::new(turnd_binary()).args(["completions", shell]), CTL_TIMEOUT);
        assert!(out.success() && out.stdout.contains("ctl") && out.stdout.contains("sessions"), "{shell}:\n{out}");
    }
    let out = run_with_timeout(Command::new(turnd_binary()).args(["completions", "tcsh"]), CTL_TIMEOUT);
    assert_eq!(out.code(), Some(2), "{out}");
}
