//! `turnd ctl`: controls a running turnd through its admin listener's `/ws` channel
//! (and `/readyz`), as a blocking WebSocket client.
//!
//! Where it looks:
//!
//! - **Address**: `--admin HOST:PORT` (or `TURND_ADMIN_ADDRESS`), else `[admin] address`
//!   of `-c FILE` (or `TURND_CONFIG`), else `127.0.0.1:9641`. A wildcard address
//!   (`0.0.0.0`, `::`) is reached on loopback.
//! - **Token**: `--token-file PATH` (or `TURND_ADMIN_TOKEN_FILE`), else the environment
//!   variable `TURND_ADMIN_TOKEN`, else `$CREDENTIALS_DIRECTORY/admin-token` (a systemd
//!   `LoadCredential=admin-token:...`), else `[admin] token` of the config file. Never
//!   an argument: it would show in `ps`. Messages name where it came from, never it.
//!
//! Exit codes: 0 done; 1 the action failed (e.g. no such allocation; `status`: turnd
//! answers but is not ready); 2 usage; 3 turnd not reachable; 4 missing or wrong token.

use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tungstenite::client::IntoClientRequest;
use tungstenite::{HandshakeError, Message, WebSocket};
use turnd::config::Config;

/// The admin listener's default address (`[admin] address`).
const DEFAULT_ADMIN: &str = "127.0.0.1:9641";
/// The page size asked of `list_allocations` (the server's largest).
const PAGE: usize = 1000;
/// Requests sent in one second at most: the server drops a client past 20 frames.
const REQUESTS_PER_SECOND: u32 = 15;
/// The credential name under `$CREDENTIALS_DIRECTORY`.
const CREDENTIAL: &str = "admin-token";

/// `turnd ctl`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Address of turnd's admin listener [default: `[admin] address` of --config, else 127.0.0.1:9641].
    #[arg(long, env = "TURND_ADMIN_ADDRESS", value_name = "HOST:PORT", global = true)]
    admin: Option<String>,
    /// turnd's config file: where to find the admin address and token (and, for
    /// `reload`, checked before turnd is asked to reload it).
    #[arg(short, long, env = "TURND_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// File holding the admin token [default: $TURND_ADMIN_TOKEN, then
    /// $CREDENTIALS_DIRECTORY/admin-token, then `[admin] token` of --config].
    #[arg(long, env = "TURND_ADMIN_TOKEN_FILE", value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
    /// How long to wait for turnd to connect and to answer, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Readiness, allocations, connections, relay ports, draining and totals.
    Status {
        /// One JSON object: `ready`, `readyz` and the `stats` message.
        #[arg(long)]
        json: bool,
    },
    /// The allocations in force (needs the token).
    Sessions {
        /// Only this user's allocations (the username as sent, e.g. a REST "expiry:id").
        #[arg(long)]
        user: Option<String>,
        /// Only allocations of this client: an IP address, or IP:PORT for one transport address.
        #[arg(long, value_name = "IP[:PORT]", value_parser = parse_client)]
        client: Option<ClientFilter>,
        /// A JSON array of allocations (as `list_allocations` gives them) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End one allocation by id, or every allocation of a user (needs the token).
    #[command(group(ArgGroup::new("which").required(true).args(["id", "user"])))]
    Drop {
        /// The allocation id (from `sessions`).
        id: Option<u64>,
        /// Every allocation of this user instead.
        #[arg(long)]
        user: Option<String>,
    },
    /// Refuse a user (and every TURN REST credential minted for that user id) or one
    /// REST username: its allocations end and it gets 401 until `unrevoke` (needs the token).
    Revoke {
        /// The username, user id or REST username.
        user: String,
    },
    /// Lift a revocation (needs the token).
    Unrevoke {
        /// The name revoked.
        user: String,
    },
    /// The revocations in force (needs the token).
    Revocations {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reload the config file, as SIGHUP does (needs the token). With --config, the file
    /// is checked here first and a bad one is not sent for.
    Reload,
    /// Drain and exit, as SIGTERM does: new allocations are refused, turnd exits once
    /// none is left or after drain-time (needs the token).
    Drain {
        /// Wait until turnd has exited, printing the allocations left.
        #[arg(long)]
        wait: bool,
    },
}

/// `--client`: an address, or one transport address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFilter {
    Ip(IpAddr),
    Addr(SocketAddr),
}

impl ClientFilter {
    fn matches(self, client: &str) -> bool {
        let Ok(client) = client.parse::<SocketAddr>() else {
            return false;
        };
        match self {
            ClientFilter::Ip(ip) => canonical(client.ip()) == canonical(ip),
            ClientFilter::Addr(addr) => canonical(client.ip()) == canonical(addr.ip()) && client.port() == addr.port(),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_client(s: &str) -> Result<ClientFilter, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(ClientFilter::Addr(addr));
    }
    let bare = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    bare.parse::<IpAddr>().map(ClientFilter::Ip).map_err(|_| format!("not an IP address or IP:PORT: {s}"))
}

/// Why `ctl` failed, and so its exit code.
#[derive(Debug)]
enum Failure {
    /// 1: turnd answered, but the action failed or found nothing.
    Action(String),
    /// 2: a bad argument or config file.
    Usage(String),
    /// 3: nothing answers at the admin address.
    Unreachable(String),
    /// 4: no token, or a wrong one.
    Unauthorized(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Action(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::Unauthorized(_) => 4,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Action(m) | Failure::Usage(m) | Failure::Unreachable(m) | Failure::Unauthorized(m) => m,
        }
    }
}

type Outcome<T = ()> = Result<T, Failure>;

/// Runs `turnd ctl`; prints errors itself and returns the exit code.
pub fn run(args: CtlArgs) -> ExitCode {
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("turnd ctl: error: {}", failure.message());
            ExitCode::from(failure.code())
        }
    }
}

/// The admin token and where it was read from (for messages; the token itself is never shown).
struct Token {
    value: String,
    source: String,
}

/// Where to reach turnd and with what.
struct Target {
    /// As the operator named it (for messages).
    name: String,
    token: Option<Token>,
    timeout: Duration,
}

fn execute(args: &CtlArgs) -> Outcome {
    let config = match &args.config {
        None => None,
        Some(path) => Some(Config::load(path).map_err(|e| match args.command {
            CtlCommand::Reload => Failure::Action(format!("not reloading: {e}")),
            _ => Failure::Usage(format!("{e}")),
        })?),
    };
    let name = match (&args.admin, &config) {
        (Some(admin), _) => admin.clone(),
        (None, Some(config)) => {
            let path = args.config.as_deref().map_or_else(String::new, |p| p.display().to_string());
            if !config.admin.enabled {
                return Err(Failure::Unreachable(format!(
                    "the admin listener is off in {path} (admin.enabled = false): turnd ctl needs it"
                )));
            }
            if config.admin.address.port() == 0 {
                return Err(Failure::Usage(format!(
                    "admin.address in {path} has port 0 (turnd picks one at start): pass --admin with the \
                     address it logged as \"listening on admin ADDR\""
                )));
            }
            config.admin.address.to_string()
        }
        (None, None) => DEFAULT_ADMIN.to_owned(),
    };
    let token = find_token(args.token_file.as_deref(), args.config.as_deref(), config.as_ref())?;
    let target = Target { name, token, timeout: args.timeout };
    match &args.command {
        CtlCommand::Status { json } => status(&target, *json),
        CtlCommand::Sessions { user, client, json } => sessions(&target, user.as_deref(), *client, *json),
        CtlCommand::Drop { id: Some(id), .. } => {
            let reply = Session::admin(&target)?.call(json!({"op": "drop_allocation", "id": id}))?;
            match reply["count"].as_u64() {
                Some(0) => Err(Failure::Action(format!(
                    "no allocation {id} (it may have ended already; `turnd ctl sessions` lists them)"
                ))),
                _ => {
                    println!("dropped allocation {id}");
                    Ok(())
                }
            }
        }
        CtlCommand::Drop { user: Some(user), .. } => {
            let reply = Session::admin(&target)?.call(json!({"op": "drop_user", "user": user}))?;
            match reply["count"].as_u64().unwrap_or(0) {
                0 => Err(Failure::Action(format!("user {} has no allocations", printable(user)))),
                n => {
                    println!("dropped {n} allocation{} of {}", plural(n), printable(user));
                    Ok(())
                }
            }
        }
        CtlCommand::Drop { .. } => Err(Failure::Usage("drop: name an allocation id or --user".into())),
        CtlCommand::Revoke { user } => {
            let reply = Session::admin(&target)?.call(json!({"op": "revoke", "user": user}))?;
            let n = reply["count"].as_u64().unwrap_or(0);
            let who = printable(user);
            println!(
                "revoked {who}: {n} allocation{} ended; {who} gets 401 until `turnd ctl unrevoke {who}` \
                 (kept across reloads, not restarts)",
                plural(n)
            );
            Ok(())
        }
        CtlCommand::Unrevoke { user } => {
            let reply = Session::admin(&target)?.call(json!({"op": "unrevoke", "user": user}))?;
            if reply["lifted"].as_bool() == Some(true) {
                println!("lifted the revocation of {}", printable(user));
                Ok(())
            } else {
                Err(Failure::Action(format!("{} was not revoked", printable(user))))
            }
        }
        CtlCommand::Revocations { json } => revocations(&target, *json),
        CtlCommand::Reload => {
            Session::admin(&target)?.call(json!({"op": "reload"}))?;
            match &args.config {
                Some(path) => println!(
                    "{} is valid; turnd at {} is reloading (SIGHUP); its log says what changed",
                    path.display(),
                    target.name
                ),
                None => println!(
                    "turnd at {} is reloading (SIGHUP); its log says whether the file was taken \
                     (pass --config to check it here first)",
                    target.name
                ),
            }
            Ok(())
        }
        CtlCommand::Drain { wait } => drain(&target, *wait),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The token, looked for in the documented order; `None` if nowhere.
fn find_token(file: Option<&Path>, config_path: Option<&Path>, config: Option<&Config>) -> Outcome<Option<Token>> {
    if let Some(path) = file {
        return read_token_file(path, format!("--token-file {}", path.display())).map(Some);
    }
    if let Some(value) = std::env::var_os("TURND_ADMIN_TOKEN") {
        let value =
            value.into_string().map_err(|_| Failure::Unauthorized("$TURND_ADMIN_TOKEN is not valid UTF-8".into()))?;
        return checked(value, "$TURND_ADMIN_TOKEN".into()).map(Some);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(CREDENTIAL);
        if path.exists() {
            let source = format!("the credential {} ($CREDENTIALS_DIRECTORY/{CREDENTIAL})", path.display());
            return read_token_file(&path, source).map(Some);
        }
    }
    if let (Some(config), Some(path)) = (config, config_path) {
        if let Some(token) = &config.admin.token {
            return checked(token.clone(), format!("admin.token in {}", path.display())).map(Some);
        }
    }
    Ok(None)
}

fn read_token_file(path: &Path, source: String) -> Outcome<Token> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Unauthorized(format!("cannot read the admin token from {source}: {e}")))?;
    checked(text, source)
}

fn checked(value: String, source: String) -> Outcome<Token> {
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(Failure::Unauthorized(format!("the admin token from {source} is empty")));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Failure::Unauthorized(format!(
            "the admin token from {source} is not 16 to 256 visible ASCII characters"
        )));
    }
    Ok(Token { value, source })
}

/// Where to look for a token, for "no token" messages.
fn token_places() -> &'static str {
    "--token-file, $TURND_ADMIN_TOKEN, $CREDENTIALS_DIRECTORY/admin-token or admin.token of --config"
}

impl Target {
    /// The admin address to connect to: the name resolved, a wildcard address as loopback.
    fn resolve(&self) -> Outcome<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = self
            .name
            .to_socket_addrs()
            .map_err(|e| Failure::Usage(format!("--admin {}: not a HOST:PORT that resolves ({e})", self.name)))?
            .map(|mut a| {
                if a.ip().is_unspecified() {
                    a.set_ip(match a.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                a
            })
            .collect();
        if addrs.is_empty() {
            return Err(Failure::Usage(format!("--admin {}: resolves to no address", self.name)));
        }
        Ok(addrs)
    }

    /// A TCP connection to the admin listener, with timeouts on every read and write.
    fn connect(&self) -> Outcome<(TcpStream, SocketAddr)> {
        let mut last = None;
        for addr in self.resolve()? {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(self.timeout));
                    let _ = stream.set_write_timeout(Some(self.timeout));
                    return Ok((stream, addr));
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        Err(Failure::Unreachable(format!(
            "turnd is not running at {} (or its admin listener is elsewhere: --admin): {e}",
            self.name
        )))
    }

    /// What a 401 means, given where the token came from.
    fn refused(&self) -> Failure {
        Failure::Unauthorized(match &self.token {
            Some(token) => format!(
                "turnd at {} refused the admin token from {} (wrong token, or turnd has no admin.token)",
                self.name, token.source
            ),
            None => format!("turnd at {} wants the admin token; none found in {}", self.name, token_places()),
        })
    }

    /// `GET path` over plain HTTP/1.1: status and body.
    fn get(&self, path: &str) -> Outcome<(u16, String)> {
        let (mut stream, addr) = self.connect()?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(token) = &self.token {
            let _ = write!(request, "Authorization: Bearer {}\r\n", token.value);
        }
        request += "\r\n";
        let mut raw = Vec::new();
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.take(64 * 1024).read_to_end(&mut raw))
            .map_err(|e| Failure::Action(format!("GET {path} from turnd at {}: {e}", self.name)))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status == 401 {
            return Err(self.refused());
        }
        Ok((status, body.trim().to_owned()))
    }
}

/// One `/ws` session.
struct Session<'a> {
    target: &'a Target,
    ws: WebSocket<TcpStream>,
    hello: Value,
    next_req: u64,
    /// Start of this second's window and requests sent in it.
    window: (Instant, u32),
}

impl<'a> Session<'a> {
    /// Connects and reads `hello`.
    fn open(target: &'a Target) -> Outcome<Session<'a>> {
        let (stream, addr) = target.connect()?;
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .map_err(|e| Failure::Usage(format!("--admin {}: {e}", target.name)))?;
        if let Some(token) = &target.token {
            let value = format!("Bearer {}", token.value).parse().map_err(|_| {
                Failure::Unauthorized(format!("the admin token from {} is not a valid header value", token.source))
            })?;
            request.headers_mut().insert(tungstenite::http::header::AUTHORIZATION, value);
        }
        let ws = match tungstenite::client(request, stream) {
            Ok((ws, _)) => ws,
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                return Err(match status {
                    401 => target.refused(),
                    503 => Failure::Action(format!("turnd at {} is busy: {}", target.name, body.trim())),
                    _ => Failure::Action(format!("turnd at {} answered {status}: {}", target.name, body.trim())),
                });
            }
            Err(HandshakeError::Interrupted(_)) => {
                return Err(Failure::Unreachable(format!(
                    "turnd at {} accepted the connection but did not answer within {}",
                    target.name,
                    humantime::format_duration(target.timeout)
                )))
            }
            Err(HandshakeError::Failure(e)) => {
                return Err(Failure::Unreachable(format!(
                    "no turnd admin listener at {} (the WebSocket handshake failed: {e})",
                    target.name
                )))
            }
        };
        let mut session = Session { target, ws, hello: Value::Null, next_req: 1, window: (Instant::now(), 0) };
        session.hello = session.next_message(|m| m["type"] == "hello")?;
        Ok(session)
    }

    /// [`Session::open`], for admin actions: fails early without the token.
    fn admin(target: &'a Target) -> Outcome<Session<'a>> {
        let session = Session::open(target)?;
        if session.hello["admin"].as_bool() != Some(true) {
            return Err(target.refused());
        }
        Ok(session)
    }

    /// Reads messages until one satisfies `want` (stats and events in between are skipped).
    fn next_message(&mut self, mut want: impl FnMut(&Value) -> bool) -> Outcome<Value> {
        let deadline = Instant::now() + self.target.timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(self.silent());
            }
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|e| Failure::Action(format!("turnd sent something that is not JSON: {e}")))?;
                    if want(&value) {
                        return Ok(value);
                    }
                }
                Ok(Message::Close(frame)) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(Failure::Action(format!("turnd at {} closed the connection: {why}", self.target.name)));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(self.silent())
                }
                Err(e) => {
                    return Err(Failure::Action(format!("the connection to turnd at {} ended: {e}", self.target.name)))
                }
            }
        }
    }

    fn silent(&self) -> Failure {
        Failure::Action(format!(
            "turnd at {} did not answer within {}",
            self.target.name,
            humantime::format_duration(self.target.timeout)
        ))
    }

    /// Sends `op` (with a fresh `req`) and returns its reply; an `error` reply is a failure.
    fn call(&mut self, mut op: Value) -> Outcome<Value> {
        self.pace();
        let req = self.next_req;
        self.next_req += 1;
        op["req"] = json!(req);
        self.ws
            .send(Message::text(op.to_string()))
            .map_err(|e| Failure::Action(format!("sending to turnd at {}: {e}", self.target.name)))?;
        let reply = self.next_message(|m| m["req"] == json!(req))?;
        if reply["type"] != "error" {
            return Ok(reply);
        }
        let message = reply["message"].as_str().unwrap_or("").to_owned();
        Err(match reply["code"].as_str() {
            Some("unauthorized") => Failure::Unauthorized(format!("turnd at {}: {message}", self.target.name)),
            Some(code) => Failure::Action(format!("turnd at {}: {message} ({code})", self.target.name)),
            None => Failure::Action(format!("turnd at {}: {message}", self.target.name)),
        })
    }

    /// Keeps under the server's frame rate limit.
    fn pace(&mut self) {
        let elapsed = self.window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.window = (Instant::now(), 0);
        } else if self.window.1 >= REQUESTS_PER_SECOND {
            std::thread::sleep(Duration::from_millis(1100).saturating_sub(elapsed));
            self.window = (Instant::now(), 0);
        }
        self.window.1 += 1;
    }
}

fn status(target: &Target, as_json: bool) -> Outcome {
    let mut session = Session::open(target)?;
    // The first snapshot comes right after `hello` (or within a second of startup).
    let stats = session.next_message(|m| m["type"] == "stats")?;
    let (code, readyz) = target.get("/readyz")?;
    let ready = code == 200;
    if as_json {
        let out = json!({"address": target.name, "server": session.hello["server"], "ready": ready, "readyz": readyz, "stats": stats});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print!("{}", render_status(target, &session.hello, &stats, &readyz));
    }
    if ready {
        Ok(())
    } else {
        Err(Failure::Action(format!("turnd at {} is not ready: {readyz}", target.name)))
    }
}

fn render_status(target: &Target, hello: &Value, stats: &Value, readyz: &str) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let t = &stats["totals"];
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{:<18} {value}", format!("{key}:"));
    };
    line("turnd", format!("{} at {}", hello["server"].as_str().unwrap_or("?"), target.name));
    line("readiness", readyz.to_owned());
    line("allocations", n(&stats["allocations"]).to_string());
    line("permissions", n(&stats["permissions"]).to_string());
    line("channels", n(&stats["channels"]).to_string());
    line("tcp connections", n(&stats["tcp_connections"]).to_string());
    line("relay ports", format!("{} in use, {} free", n(&stats["ports_in_use"]), n(&stats["ports_available"])));
    line("draining", if stats["draining"] == true { "yes" } else { "no" }.to_owned());
    line("admin connections", n(&stats["admin_connections"]).to_string());
    line("requests", format!("{} ({} errors)", n(&t["requests"]), n(&t["request_errors"])));
    line(
        "allocations ever",
        format!("{} created, {} expired", n(&t["allocations_created"]), n(&t["allocations_expired"])),
    );
    line(
        "relayed",
        format!(
            "{} to peers, {} to clients",
            bytes(n(&t["relayed_bytes"]["client_to_peer"])),
            bytes(n(&t["relayed_bytes"]["peer_to_client"]))
        ),
    );
    line("auth failures", nonzero(&t["auth_failures"]));
    line("dropped packets", nonzero(&t["dropped"]));
    out
}

/// "3 (bad_integrity 2, no_user 1)" from an object of counters, or "0".
fn nonzero(counters: &Value) -> String {
    let Some(map) = counters.as_object() else {
        return "0".into();
    };
    let parts: Vec<String> =
        map.iter().filter_map(|(k, v)| v.as_u64().filter(|&v| v > 0).map(|v| format!("{k} {v}"))).collect();
    let total: u64 = map.values().filter_map(Value::as_u64).sum();
    if parts.is_empty() {
        "0".into()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

/// Every allocation, page by page, ordered by id.
fn all_allocations(session: &mut Session) -> Outcome<(Vec<Value>, u64)> {
    let mut all: Vec<Value> = Vec::new();
    let mut offset = 0usize;
    loop {
        let reply = session.call(json!({"op": "list_allocations", "offset": offset, "limit": PAGE}))?;
        let page = reply["allocations"].as_array().cloned().unwrap_or_default();
        let total = reply["total"].as_u64().unwrap_or(0);
        offset += page.len();
        // Allocations that ended between pages shift the rest down; an id seen twice is kept once.
        for a in page.iter() {
            if all.last().map_or(true, |last| last["id"].as_u64() < a["id"].as_u64()) {
                all.push(a.clone());
            }
        }
        if page.is_empty() || offset as u64 >= total {
            return Ok((all, total));
        }
    }
}

fn sessions(target: &Target, user: Option<&str>, client: Option<ClientFilter>, as_json: bool) -> Outcome {
    let mut session = Session::admin(target)?;
    let (all, _) = all_allocations(&mut session)?;
    let listed = all.len();
    let chosen: Vec<Value> = all
        .into_iter()
        .filter(|a| user.map_or(true, |u| a["user"] == u))
        .filter(|a| client.map_or(true, |c| c.matches(a["client"].as_str().unwrap_or(""))))
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&chosen).unwrap_or_default());
        return Ok(());
    }
    let header = ["ID", "USER", "CLIENT", "TRANSPORT", "RELAY", "AGE", "EXPIRES IN", "TO PEER", "TO CLIENT"];
    let rows: Vec<Vec<String>> = chosen
        .iter()
        .map(|a| {
            let s = |k: &str| printable(a[k].as_str().unwrap_or("-"));
            let n = |k: &str| a[k].as_u64().unwrap_or(0);
            vec![
                n("id").to_string(),
                s("user"),
                s("client"),
                s("transport"),
                s("relay"),
                duration(n("age_secs")),
                duration(n("expires_in_secs")),
                bytes(n("bytes_to_peer")),
                bytes(n("bytes_to_client")),
            ]
        })
        .collect();
    print!("{}", table(&header, &rows, &[0, 5, 6, 7, 8]));
    let filtered = user.is_some() || client.is_some();
    match (filtered, rows.len()) {
        (false, n) => println!("{n} allocation{}", plural(n as u64)),
        (true, n) => println!("{n} of {listed} allocation{} match", plural(listed as u64)),
    }
    Ok(())
}

fn revocations(target: &Target, as_json: bool) -> Outcome {
    let reply = Session::admin(target)?.call(json!({"op": "list_revocations"}))?;
    let list = reply["revocations"].as_array().cloned().unwrap_or_default();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return Ok(());
    }
    if list.is_empty() {
        println!("no revocations");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let lapses = match r["lapses_at"].as_u64() {
                Some(at) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at)).to_string(),
                None => "until lifted".into(),
            };
            vec![printable(r["user"].as_str().unwrap_or("")), lapses]
        })
        .collect();
    print!("{}", table(&["USER", "LAPSES"], &rows, &[]));
    Ok(())
}

fn drain(target: &Target, wait: bool) -> Outcome {
    let mut session = Session::admin(target)?;
    let reply = session.call(json!({"op": "drain"}))?;
    if reply["already"] == true {
        println!("turnd at {} is already draining", target.name);
    } else {
        println!(
            "turnd at {} is draining (SIGTERM): new allocations are refused; it exits when none is left \
             or after drain-time",
            target.name
        );
    }
    if !wait {
        return Ok(());
    }
    // Subscribing keeps the session from being closed as idle while we only listen.
    session.call(json!({"op": "subscribe", "topics": ["stats"]}))?;
    let mut left = None;
    loop {
        match session.next_message(|m| m["type"] == "stats") {
            Ok(stats) => {
                let now = stats["allocations"].as_u64();
                if now != left {
                    println!("{} allocation{} left", now.unwrap_or(0), plural(now.unwrap_or(0)));
                    left = now;
                }
            }
            Err(failure) => {
                // The connection ends with the process; a refused reconnect confirms it.
                return match target.connect() {
                    Err(Failure::Unreachable(_)) => {
                        println!("turnd has exited");
                        Ok(())
                    }
                    _ => Err(failure),
                };
            }
        }
    }
}

/// Columns padded to their widest cell; `right` are right-aligned.
fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text += "  ";
            }
            if right.contains(&i) {
                let _ = write!(text, "{cell:>w$}");
            } else {
                let _ = write!(text, "{cell:<w$}");
            }
        }
        out += text.trim_end();
        out += "\n";
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A client-chosen string made safe for a terminal: control characters escaped.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// "45s", "3m05s", "2h07m", "3d04h".
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Bytes in binary units: "950 B", "1.2 KiB", "3.4 GiB".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_filters_match_addresses_and_transport_addresses() {
        let ip = parse_client("127.0.0.2").unwrap();
        assert!(ip.matches("127.0.0.2:5000"));
        assert!(!ip.matches("127.0.0.3:5000"));
        assert!(ip.matches("[::ffff:127.0.0.2]:5000"));
        let addr = parse_client("127.0.0.2:5000").unwrap();
        assert!(addr.matches("127.0.0.2:5000") && !addr.matches("127.0.0.2:5001"));
        assert!(parse_client("[::1]").unwrap().matches("[::1]:1"));
        assert!(parse_client("nope").is_err());
    }

    #[test]
    fn units_and_durations_read_well() {
        assert_eq!(bytes(950), "950 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7620), "2h07m");
        assert_eq!(duration(3 * 86400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn tables_align_and_escape() {
        let t = table(&["ID", "USER"], &[vec!["7".into(), printable("a\nb")]], &[0]);
        assert_eq!(t, "ID  USER\n 7  a\\nb\n");
    }

    #[test]
    fn tokens_are_trimmed_and_checked() {
        assert_eq!(checked("  abc\n".into(), "x".into()).unwrap().value, "abc");
        assert!(matches!(checked("\n".into(), "x".into()), Err(Failure::Unauthorized(_))));
        assert!(matches!(checked("a b".into(), "x".into()), Err(Failure::Unauthorized(_))));
    }
}
