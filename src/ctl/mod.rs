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
        /// Only allocations of this realm (tenant).
        #[arg(long)]
        realm: Option<String>,
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
    /// The fleet's TURN REST secrets in Redis (`[cluster] secrets-from-redis`): reads
    /// `[cluster]` of --config and talks to Redis, not to turnd. Secrets are read from
    /// standard input (one line), never from an argument; `list` shows fingerprints.
    Secrets {
        #[command(subcommand)]
        action: secrets::SecretsAction,
    },
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
    if let CtlCommand::Secrets { action } = &args.command {
        let Some(config) = &config else {
            return Err(Failure::Usage("secrets: needs --config (its [cluster] section names Redis)".into()));
        };
        return secrets::run(config, action, args.timeout).map_err(|e| match e {
            secrets::Error::Usage(m) => Failure::Usage(m),
            secrets::Error::Refused(m) => Failure::Action(m),
            secrets::Error::Redis(m) => Failure::Unreachable(m),
        });
    }
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
        CtlCommand::Sessions { user, client, realm, json } => {
            sessions(&target, SessionFilter { user: user.as_deref(), client: *client, realm: realm.as_deref() }, *json)
        }
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
        CtlCommand::Secrets { .. } => Ok(()), // handled above, without the admin listener
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

mod report;
mod secrets;
mod session;

use report::{drain, printable, revocations, sessions, status, SessionFilter};
use session::Session;

#[cfg(test)]
mod tests {
    use super::report::{bytes, duration, table};
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
