//! Tenants end to end: the real binary with two realms, one per UDP listener (the
//! second also chosen by TLS server name), driven by turnd's own client, coturn's
//! `turnutils_uclient` and Python's aioice; `/metrics`, `/ws?realm=`,
//! `turnd ctl sessions --realm` and the dashboard's realm selector; and a reload that
//! removes that tenant and adds a third (chosen by TLS server name) while the default
//! tenant's allocation keeps relaying.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::http::{metric, scrape, ws_connect, ws_send, ws_wait};
use common::turn_client::{self, error_code, StreamClient, TurnClient};

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::Realm;
use stun_codec::rfc5766::methods::ALLOCATE;

const TOKEN: &str = "tenants-test-token-0123456789";
const A: &str = "a.test";
const B: &str = "b.test";
const C: &str = "c.test";
const A_PASS: &str = "a-pass";
const B_PASS: &str = "b-pass";

/// Realm `a.test` (alice/a-pass) on the first UDP listener and the TLS listener;
/// tenant `b.test` (alice/b-pass, carol/c-pass, two allocations per user) on the
/// second UDP listener and by the TLS name `b.test`; `extra` appended (more tenants).
fn config(cert: &TestCert, b: bool, extra: &str) -> String {
    let (min, max) = relay_port_range();
    let b_tenant = if b {
        format!(
            "[[tenant]]\nrealm = \"{B}\"\nserver-names = [\"b.test\"]\n\n\
             [[tenant.user]]\nname = \"alice\"\npassword = \"{B_PASS}\"\n\n\
             [[tenant.user]]\nname = \"carol\"\npassword = \"c-pass\"\n\n\
             [tenant.limits]\nallocations-per-user = 2\n\n"
        )
    } else {
        String::new()
    };
    let listen_b = if b { format!("realm = \"{B}\"\n") } else { String::new() };
    cert.add_to(&format!(
        "realm = \"{A}\"\n\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n{listen_b}\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\n\
         [[auth.user]]\nname = \"alice\"\npassword = \"{A_PASS}\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         {b_tenant}{extra}"
    ))
}

/// The `n`th listener of `transport`, in config order.
fn listener(turnd: &TurndProcess, transport: &str, n: usize) -> SocketAddr {
    turnd.listeners().iter().filter(|(t, _)| t == transport).nth(n).map(|(_, a)| *a).expect("a listener")
}

/// The realm a 401 to an unauthenticated Allocate names, over UDP.
fn udp_realm(server: SocketAddr) -> String {
    let mut client = TurnClient::on_loopback(server, "x", "y", "");
    let answer = client.plain(ALLOCATE).expect("an answer");
    assert_eq!(error_code(&answer), Some(401));
    answer.get_attribute::<Realm>().expect("a REALM").text().to_owned()
}

/// The realm a 401 names over TLS with server name `sni`.
fn tls_realm(server: SocketAddr, sni: &str) -> String {
    let mut stream = turn_client::tls_connect_named(server, sni);
    let answer = StreamClient::new("x", "y", "").plain(&mut stream, ALLOCATE);
    assert_eq!(error_code(&answer), Some(401));
    answer.get_attribute::<Realm>().expect("a REALM").text().to_owned()
}

fn ctl(admin: SocketAddr, args: &[&str]) -> CmdOutput {
    let mut command = Command::new(turnd_binary());
    command.arg("ctl").arg("--admin").arg(admin.to_string()).args(args);
    for var in ["TURND_ADMIN_TOKEN_FILE", "TURND_CONFIG", "TURND_ADMIN_ADDRESS", "CREDENTIALS_DIRECTORY"] {
        command.env_remove(var);
    }
    command.env("TURND_ADMIN_TOKEN", TOKEN);
    let out = run_with_timeout(&mut command, Duration::from_secs(20));
    assert!(!out.timed_out() && out.code() == Some(0), "turnd ctl {args:?}:\n{out}");
    out
}

fn sessions_json(admin: SocketAddr, args: &[&str]) -> Vec<Value> {
    let out = ctl(admin, &[&["sessions", "--json"], args].concat());
    serde_json::from_str::<Value>(&out.stdout).expect("JSON").as_array().expect("an array").clone()
}

fn realms_of(list: &[Value]) -> Vec<String> {
    let mut realms: Vec<String> = list.iter().map(|a| a["realm"].as_str().unwrap_or("?").to_owned()).collect();
    realms.sort();
    realms
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `turnutils_uclient -c` through `server` as `user`/`password`, 10 messages.
fn uclient(server: SocketAddr, user: &str, password: &str, peer: SocketAddr) -> CmdOutput {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-c", "-p", &server.port().to_string(), "-u", user, "-w", password, "-n", "10", "-l", "100"])
        .args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()])
        .arg(server.ip().to_string());
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

/// uclient's `tot_recv_msgs=` from its closing line, if it got that far.
fn uclient_received(output: &str) -> Option<u64> {
    let line = output.lines().rfind(|l| l.contains("tot_recv_msgs=") && !l.contains("msz="))?;
    let rest = &line[line.find("tot_recv_msgs=")? + "tot_recv_msgs=".len()..];
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// tests/py/aioice_turn.py through `server` as `user`/`password`.
fn aioice(server: SocketAddr, user: &str, password: &str, peer: SocketAddr) -> CmdOutput {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_turn.py");
    run_with_timeout(
        Command::new(python()).arg(script).args(["--server", &server.to_string(), "--peer", &peer.to_string()]).args([
            "--user",
            user,
            "--password",
            password,
            "--transport",
            "udp",
            "--count",
            "5",
        ]),
        Duration::from_secs(60),
    )
}

#[test]
fn two_tenants_authenticate_count_report_and_filter_apart() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let cert = TestCert::new();
    let mut turnd = TurndProcess::start(&config(&cert, true, ""), &[]);
    let (udp_a, udp_b, tls) = (listener(&turnd, "udp", 0), listener(&turnd, "udp", 1), turnd.tls_addr());
    let admin = turnd.admin_addr();

    // The challenge names the listener's realm, or the one the TLS name chooses.
    assert_eq!(udp_realm(udp_a), A);
    assert_eq!(udp_realm(udp_b), B);
    assert_eq!(tls_realm(tls, "b.test"), B);
    assert_eq!(tls_realm(tls, "localhost"), A, "a name no tenant claims: the listener's realm");

    // alice is two users: each realm's password works there only.
    let mut alice_a = TurnClient::on_loopback(udp_a, "alice", A_PASS, A);
    alice_a.allocate(vec![]).expect("alice of a.test");
    assert_eq!(TurnClient::on_loopback(udp_b, "alice", A_PASS, B).allocate(vec![]).err(), Some(401));
    assert_eq!(TurnClient::on_loopback(udp_a, "alice", B_PASS, A).allocate(vec![]).err(), Some(401));
    let mut alice_b = TurnClient::on_loopback(udp_b, "alice", B_PASS, B);
    alice_b.allocate(vec![]).expect("alice of b.test");
    let mut tls_b = turn_client::tls_connect_named(tls, "b.test");
    StreamClient::new("alice", B_PASS, B).allocate(&mut tls_b).expect("alice of b.test over TLS by name");

    // b.test holds a user to two allocations; a.test (100 by default) does not.
    let mut carols: Vec<TurnClient> = (0..2).map(|_| TurnClient::on_loopback(udp_b, "carol", "c-pass", B)).collect();
    for carol in &mut carols {
        carol.allocate(vec![]).expect("carol within her quota");
    }
    let mut third = TurnClient::on_loopback(udp_b, "carol", "c-pass", B);
    assert_eq!(third.allocate(vec![]).err(), Some(486), "carol is at b.test's allocations-per-user");
    let mut more_alice_a: Vec<TurnClient> =
        (0..2).map(|_| TurnClient::on_loopback(udp_a, "alice", A_PASS, A)).collect();
    for alice in &mut more_alice_a {
        alice.allocate(vec![]).expect("a.test's alice is not b.test's");
    }
    assert_eq!(alice_b.refresh(0), Ok(()));
    // b.test's alice has the TLS allocation; one more fits, then the quota holds.
    let mut again = TurnClient::on_loopback(udp_b, "alice", B_PASS, B);
    again.allocate(vec![]).expect("alice of b.test, second allocation");
    assert_eq!(TurnClient::on_loopback(udp_b, "alice", B_PASS, B).allocate(vec![]).err(), Some(486));
    assert_eq!(again.refresh(0), Ok(()));

    // `turnd ctl sessions`: the realm column and --realm, table and JSON.
    let all = sessions_json(admin, &[]);
    assert_eq!(realms_of(&all), [A, A, A, B, B, B], "{all:?}");
    let only_b = sessions_json(admin, &["--realm", B]);
    assert_eq!(realms_of(&only_b), [B, B, B], "{only_b:?}");
    assert!(sessions_json(admin, &["--realm", "nobody.test"]).is_empty());
    let table = ctl(admin, &["sessions", "--realm", A]).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  USER   REALM") && lines.len() == 5, "{table}");
    assert!(lines[1..4].iter().all(|l| l.contains(" a.test ") && !l.contains(B)), "{table}");
    assert!(table.ends_with("3 of 6 allocations match\n"), "{table}");
    eprintln!("turnd ctl sessions:\n{}", ctl(admin, &["sessions"]).stdout);
    let status = ctl(admin, &["status"]).stdout;
    eprintln!("turnd ctl status:\n{status}");
    assert!(status.contains("tenants:") && status.contains("  a.test:") && status.contains("  b.test:"), "{status}");

    // /metrics: a realm label per configured realm, no other.
    let mut text = String::new();
    // Each worker's share reaches /metrics with its next snapshot: wait for both realms.
    wait_until("the realm gauges to count", Duration::from_secs(5), || {
        text = scrape(admin);
        [A, B].iter().all(|r| metric(&text, &format!("turnd_realm_allocations{{realm=\"{r}\"}}")) == Some(3.0))
    });
    let failures = metric(&text, &format!("turnd_realm_auth_failures_total{{realm=\"{B}\"}}")).unwrap();
    assert!(failures >= 1.0, "alice's a.test password in b.test failed there:\n{text}");
    let labelled: Vec<&str> = text.lines().filter(|l| l.starts_with("turnd_realm_")).collect();
    assert_eq!(labelled.len(), 6, "three families, two realms: {labelled:?}");
    assert!(labelled.iter().all(|l| l.contains("realm=\"a.test\"") || l.contains("realm=\"b.test\"")));

    // /ws?realm=: that realm's allocations and events only.
    let auth = format!("Bearer {TOKEN}");
    let mut ws = ws_connect(admin, &format!("/ws?realm={B}"), &[("authorization", &auth)]).expect("/ws");
    ws_send(&mut ws, json!({"op": "list_allocations", "req": 1}));
    let page = ws_wait(&mut ws, Duration::from_secs(5), |m| m["req"] == 1);
    let listed: Vec<Value> = page["allocations"].as_array().unwrap().clone();
    assert_eq!((page["total"].as_u64(), realms_of(&listed)), (Some(3), vec![B.to_owned(); 3]), "{page}");
    ws_send(&mut ws, json!({"op": "subscribe", "topics": ["allocations"], "req": 2}));
    ws_wait(&mut ws, Duration::from_secs(5), |m| m["req"] == 2);
    TurnClient::on_loopback(udp_a, "alice", A_PASS, A).allocate(vec![]).expect("a.test event");
    let mut last_b = TurnClient::on_loopback(udp_b, "alice", B_PASS, B);
    last_b.allocate(vec![]).expect("b.test event");
    let created = ws_wait(&mut ws, Duration::from_secs(5), |m| m["event"] == "allocation.created");
    assert_eq!(created["realm"], B, "the a.test allocation came first but is filtered out: {created}");
    assert_eq!(last_b.refresh(0), Ok(()));

    // coturn's uclient and aioice, each in its realm with its realm's credentials.
    let peer = UdpEchoPeer::start();
    if need_tool("turnutils_uclient", "coturn") {
        let out = uclient(udp_a, "alice", A_PASS, peer.addr());
        let received = uclient_received(&out.all()).unwrap_or(0);
        assert!(received >= 9, "uclient in a.test relayed {received} of 10:\n{out}");
        eprintln!("uclient in a.test: {received} of 10 echoed");
        let out = uclient(udp_b, "carol", A_PASS, peer.addr());
        assert!(out.all().contains("Cannot complete Allocation"), "uclient, a.test password in b.test:\n{out}");
        assert_eq!(uclient_received(&out.all()).unwrap_or(0), 0, "a wrong realm password relays nothing:\n{out}");
    }
    if need(python_module_available("aioice"), "Python module `aioice` (pip install aioice)") {
        let out = aioice(udp_b, "alice", B_PASS, peer.addr());
        assert!(out.success() && out.stdout.contains("ECHOED 5/5"), "aioice in b.test:\n{out}");
        let out = aioice(udp_b, "alice", A_PASS, peer.addr());
        assert!(out.code() == Some(2) && out.stdout.contains("error_code=401"), "aioice, a.test password:\n{out}");
    }
    assert!(turnd.is_running());
}

#[test]
fn reload_adds_and_removes_tenants_while_another_keeps_relaying() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let cert = TestCert::new();
    let c_tenant = format!("[[tenant]]\nrealm = \"{C}\"\nserver-names = [\"c.test\"]\nsecrets = [\"c-secret\"]\n");
    // b.test is reached by TLS name only here, so removing it needs no listener change.
    let first = config(&cert, true, "").replace(&format!("realm = \"{B}\"\n\n[[listen]]"), "\n[[listen]]");
    let mut turnd = TurndProcess::start(&first, &[]);
    let (udp_a, tls, admin) = (listener(&turnd, "udp", 0), turnd.tls_addr(), turnd.admin_addr());

    let peer = UdpEchoPeer::start();
    let mut alice_a = TurnClient::on_loopback(udp_a, "alice", A_PASS, A);
    alice_a.allocate(vec![]).expect("alice of a.test");
    alice_a.bind_channel(0x4000, peer.addr());
    let echoes = |client: &TurnClient| {
        client.send_channel(0x4000, b"still here");
        client.recv_channel(Duration::from_secs(2)).is_some_and(|p| p == b"still here")
    };
    assert!(echoes(&alice_a));
    let mut tls_b = turn_client::tls_connect_named(tls, "b.test");
    let mut b_client = StreamClient::new("alice", B_PASS, B);
    b_client.allocate(&mut tls_b).expect("alice of b.test");
    assert_eq!(realms_of(&sessions_json(admin, &[])), [A, B]);
    assert_eq!(tls_realm(tls, "c.test"), A, "no c.test yet: the listener's realm");

    // Reload: b.test goes, c.test comes (with a REST secret), a.test is untouched.
    let path = turnd_config_path(&turnd);
    let second = config(&cert, false, &c_tenant);
    let second = second.replacen(&relay_section(&second), &relay_section(&first), 1);
    std::fs::write(&path, second).unwrap();
    ctl(admin, &["reload"]);
    wait_until("b.test's allocation to end", Duration::from_secs(10), || realms_of(&sessions_json(admin, &[])) == [A]);
    assert_eq!(tls_realm(tls, "c.test"), C);
    assert_eq!(tls_realm(tls, "b.test"), A, "b.test's name chooses nothing now");
    let rest_user = format!("{}:carol", unix_now() + 600);
    let password = turnd::turn::auth::rest_password(b"c-secret", &rest_user);
    let mut tls_c = turn_client::tls_connect_named(tls, "c.test");
    StreamClient::new(&rest_user, &password, C).allocate(&mut tls_c).expect("a c.test REST user");
    assert!(echoes(&alice_a), "a.test's allocation relays across the reload");
    assert_eq!(realms_of(&sessions_json(admin, &[])), [A, C]);
    // The realm labels follow the configured set (within the once-a-second snapshot).
    wait_until("the realm labels to follow the reload", Duration::from_secs(5), || {
        let text = scrape(admin);
        text.contains("realm=\"c.test\"") && !text.contains("realm=\"b.test\"")
    });
    assert!(turnd.is_running());
}

#[test]
fn the_dashboard_lists_one_realm_at_a_time_in_headless_chromium() {
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !need_tool("openssl", "openssl")
        || !need_tool("node", "nodejs")
        || !need(std::path::Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium (package chromium)")
        || !need(browser.join("node_modules/playwright-core").exists(), "playwright-core (npm ci in tests/browser)")
    {
        return;
    }
    let cert = TestCert::new();
    let turnd = TurndProcess::start(&config(&cert, true, ""), &[]);
    let (udp_a, udp_b, admin) = (listener(&turnd, "udp", 0), listener(&turnd, "udp", 1), turnd.admin_addr());
    let mut held = vec![TurnClient::on_loopback(udp_a, "alice", A_PASS, A)];
    held.extend((0..2).map(|_| TurnClient::on_loopback(udp_b, "carol", "c-pass", B)));
    for client in &mut held {
        client.allocate(vec![]).expect("an allocation");
    }
    let mut node = Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .arg(format!("http://{admin}/#token={TOKEN}"))
        .current_dir(&browser)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn node");
    let mut stdin = node.stdin.take().unwrap();
    let stdout = node.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut answer = |command: &str, reply: &str| -> String {
        use std::io::Write;
        writeln!(stdin, "{command}").unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with(reply) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        let _ = node.kill();
        panic!("the page did not answer {command:?} with {reply:?}: {seen:?}");
    };
    answer(&format!("realm {B} 2"), &format!("listed {B} 2"));
    answer(&format!("realm {A} 1"), &format!("listed {A} 1"));
    let report = answer("quit", "report ");
    // End of input lets the script exit.
    drop(stdin);
    let report: Value = serde_json::from_str(report.trim_start_matches("report ")).unwrap();
    assert_eq!(report["problems"], json!([]), "the page logged errors: {report}");
    let _ = node.wait();
}

/// The `[relay]` section of a test config (its random port range), to keep it across a
/// reload.
fn relay_section(config: &str) -> String {
    let start = config.find("[relay]").unwrap();
    let end = start + config[start..].find("\n\n").unwrap();
    config[start..end].to_owned()
}

/// The config file the harness wrote (the `-c` argument of the child).
fn turnd_config_path(turnd: &TurndProcess) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", turnd.pid())).expect("cmdline");
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let i = args.iter().position(|a| a == "-c").expect("-c");
    args[i + 1].clone().into()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
