//! What `turnd ctl` prints: status, sessions, revocations and drain progress, as tables
//! for people or JSON for scripts.

use super::*;

pub(super) fn status(target: &Target, as_json: bool) -> Outcome {
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

pub(super) fn render_status(target: &Target, hello: &Value, stats: &Value, readyz: &str) -> String {
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
    // One line per tenant once there is more than the default one.
    let realms = stats["realms"].as_array().cloned().unwrap_or_default();
    if realms.len() > 1 {
        line("tenants", realms.len().to_string());
        for r in &realms {
            line(
                &format!("  {}", printable(r["realm"].as_str().unwrap_or("?"))),
                format!(
                    "{} allocations, {} auth failures, {} relayed",
                    n(&r["allocations"]),
                    n(&r["auth_failures"]),
                    bytes(n(&r["relayed_bytes"]))
                ),
            );
        }
    }
    out
}

/// "3 (bad_integrity 2, no_user 1)" from an object of counters, or "0".
pub(super) fn nonzero(counters: &Value) -> String {
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
pub(super) fn all_allocations(session: &mut Session) -> Outcome<(Vec<Value>, u64)> {
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

/// What `turnd ctl sessions` keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionFilter<'a> {
    /// `--user`.
    pub(super) user: Option<&'a str>,
    /// `--client`.
    pub(super) client: Option<ClientFilter>,
    /// `--realm`.
    pub(super) realm: Option<&'a str>,
}

pub(super) fn sessions(target: &Target, filter: SessionFilter, as_json: bool) -> Outcome {
    let SessionFilter { user, client, realm } = filter;
    let mut session = Session::admin(target)?;
    let (all, _) = all_allocations(&mut session)?;
    let listed = all.len();
    let chosen: Vec<Value> = all
        .into_iter()
        .filter(|a| user.map_or(true, |u| a["user"] == u))
        .filter(|a| realm.map_or(true, |r| a["realm"] == r))
        .filter(|a| client.map_or(true, |c| c.matches(a["client"].as_str().unwrap_or(""))))
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&chosen).unwrap_or_default());
        return Ok(());
    }
    let header = ["ID", "USER", "REALM", "CLIENT", "TRANSPORT", "RELAY", "AGE", "EXPIRES IN", "TO PEER", "TO CLIENT"];
    let rows: Vec<Vec<String>> = chosen
        .iter()
        .map(|a| {
            let s = |k: &str| printable(a[k].as_str().unwrap_or("-"));
            let n = |k: &str| a[k].as_u64().unwrap_or(0);
            vec![
                n("id").to_string(),
                s("user"),
                s("realm"),
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
    print!("{}", table(&header, &rows, &[0, 6, 7, 8, 9]));
    let filtered = user.is_some() || client.is_some() || realm.is_some();
    match (filtered, rows.len()) {
        (false, n) => println!("{n} allocation{}", plural(n as u64)),
        (true, n) => println!("{n} of {listed} allocation{} match", plural(listed as u64)),
    }
    Ok(())
}

pub(super) fn revocations(target: &Target, as_json: bool) -> Outcome {
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

pub(super) fn drain(target: &Target, wait: bool) -> Outcome {
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
                // A process on its way out may still accept for a moment: ask again,
                // for at most two seconds.
                for _ in 0..20 {
                    if let Err(Failure::Unreachable(_)) = target.connect() {
                        println!("turnd has exited");
                        return Ok(());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                return Err(failure);
            }
        }
    }
}

/// Columns padded to their widest cell; `right` are right-aligned.
pub(super) fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
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
pub(super) fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// "45s", "3m05s", "2h07m", "3d04h".
pub(super) fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Bytes in binary units: "950 B", "1.2 KiB", "3.4 GiB".
pub(super) fn bytes(n: u64) -> String {
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
