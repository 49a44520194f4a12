//! `cloud: { external: ... }`: how the rig starts (or finds) a team's cloud.
//!
//! ```yaml
//! cloud:
//!   listen: "127.0.0.1:0"          # where the boards send: the relay's ports
//!   cache: { kind: redis }         # the rig's to kill and restore
//!   external:
//!     command: ["{rig}", "cloud", "serve", "--listen", "{listen}", ...]
//!     env: { RIG_CACHE_URL: "{cache_url}" }
//!     ready: { log: "listening on udp://" }
//!     ready_timeout: 30s
//!     log: { connected: '(?P<device>\S+): connected via (?P<via>\w+)' }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::units::Dur;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalCfg {
    /// The cloud's command line, word by word, with placeholders
    /// (`{rig}`, `{bench}`, `{listen}`, `{listen_port}`, `{dir}`,
    /// `{mitigation}`, `{seed}`).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Extra environment for the command; values may also use
    /// `{cache_url}` (the rig's Redis with its password).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Or: a cloud already running at this address, which the rig neither
    /// starts nor stops.
    #[serde(default)]
    pub attach: Option<String>,
    #[serde(default)]
    pub ready: Ready,
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: Dur,
    /// Connection state read from the cloud's log lines.
    #[serde(default)]
    pub log: LogCfg,
    /// The boards also reach the cloud over TCP (MQTT over TLS, say): each
    /// relay port accepts TCP connections too, forwarded to `{listen}`.
    #[serde(default)]
    pub tcp: bool,
}

fn default_ready_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// When a started cloud counts as serving.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Ready {
    /// A socket is bound to `{listen}`'s UDP port (read from `/proc/net/udp`).
    #[default]
    Port,
    /// A log line matches this regex.
    Log(String),
}

/// Regexes over the cloud's log lines; each must capture `device` (a bench
/// device id).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogCfg {
    /// The device is connected; may capture `via` (a word with `resum` in
    /// it for a resumed session, anything else is a full handshake) and
    /// `session`.
    #[serde(default)]
    pub connected: Option<String>,
    /// The cloud got a record for a session it does not know (its cache
    /// lost it); a `resume` group that takes part in the match marks the
    /// first record of a wake (a resume attempt), an `action` group says
    /// what the cloud did (`dropped`, the default, `rejected`, `healed`).
    #[serde(default)]
    pub unknown_session: Option<String>,
}

impl ExternalCfg {
    pub fn takes_mitigation(&self) -> bool {
        self.command.iter().flatten().any(|w| w.contains("{mitigation}"))
    }

    /// What is wrong with it on a bench with this clock and cache: each
    /// problem a sentence.
    pub fn problems(&self, real_clock: bool, cache_kind: &str) -> Vec<String> {
        let mut out = Vec::new();
        match (&self.command, &self.attach) {
            (None, None) => {
                out.push("`external:` needs `command:` (the rig starts the cloud) or `attach:` (an address)".into())
            }
            (Some(_), Some(_)) => out.push("`external:` takes `command:` or `attach:`, not both".into()),
            (Some(c), None) if c.is_empty() => out.push("`command:` is empty".into()),
            (None, Some(a)) => {
                if let Err(e) = resolve(a) {
                    out.push(e);
                }
                if !self.env.is_empty() {
                    out.push("`env:` needs `command:`: the rig starts no process to attach to".into());
                }
            }
            _ => {}
        }
        if !real_clock {
            out.push("an external cloud needs `clock: real`: another process cannot follow a virtual clock".into());
        }
        if cache_kind == "memory" && self.command.is_some() {
            out.push("an external cloud cannot reach the rig's in-process `memory` cache: use `cache: { kind: redis }` and hand it `{cache_url}` in `env:`".into());
        }
        let probe = Vars::probe();
        for w in self.command.iter().flatten() {
            if w.contains("{cache_url}") {
                out.push(format!(
                    "`{w}`: `{{cache_url}}` holds the cache's password, and a command line is readable by every local user: pass it in `env:`"
                ));
            } else if let Err(e) = expand(w, &probe, false) {
                out.push(e);
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                out.push(format!("`{k}` is not an environment variable name"));
            }
            if let Err(e) = expand(v, &probe, true) {
                out.push(e);
            }
        }
        if let Ready::Log(re) = &self.ready
            && let Err(e) = regex::Regex::new(re)
        {
            out.push(format!("`ready: {{ log }}` is not a regex: {e}"));
        }
        for (name, re) in [
            ("connected", &self.log.connected),
            ("unknown_session", &self.log.unknown_session),
        ] {
            let Some(re) = re else { continue };
            match regex::Regex::new(re) {
                Err(e) => out.push(format!("`log: {{ {name} }}` is not a regex: {e}")),
                Ok(re) if !re.capture_names().flatten().any(|n| n == "device") => out.push(format!(
                    "`log: {{ {name} }}` must capture the device id as `(?P<device>...)`"
                )),
                Ok(_) => {}
            }
        }
        let t = self.ready_timeout.0;
        if t.is_zero() || t > Duration::from_secs(3600) {
            out.push("`ready_timeout:` must be between 1 ms and 1 h".into());
        }
        out
    }
}

/// An `attach:` address.
pub fn resolve(a: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    a.to_socket_addrs()
        .map_err(|e| format!("`attach: {a}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`attach: {a}` names no address"))
}

/// What placeholders stand for when a cloud is started.
pub struct Vars {
    pub rig: String,
    pub bench: String,
    pub listen: SocketAddr,
    pub dir: String,
    pub mitigation: String,
    pub seed: u64,
    pub cache_url: Option<String>,
}

impl Vars {
    /// Stand-ins, to check templates when a bench is loaded.
    fn probe() -> Vars {
        Vars {
            rig: "rig".into(),
            bench: "bench.yaml".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 1)),
            dir: "dir".into(),
            mitigation: "drop".into(),
            seed: 0,
            cache_url: Some("redis://".into()),
        }
    }
}

/// `template` with its placeholders replaced; `{{` and `}}` are braces.
/// `env` admits `{cache_url}`.
pub fn expand(template: &str, v: &Vars, env: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
            continue;
        }
        if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
            continue;
        }
        let Some(end) = tail.find('}').filter(|_| tail.starts_with('{')) else {
            return Err(format!(
                "`{template}`: unmatched `{}` (write `{{{{` or `}}}}` for a brace)",
                &tail[..1]
            ));
        };
        let name = &tail[1..end];
        let value = match name {
            "rig" => v.rig.clone(),
            "bench" => v.bench.clone(),
            "listen" => v.listen.to_string(),
            "listen_host" => v.listen.ip().to_string(),
            "listen_port" => v.listen.port().to_string(),
            "dir" => v.dir.clone(),
            "mitigation" => v.mitigation.clone(),
            "seed" => v.seed.to_string(),
            "cache_url" if env => v
                .cache_url
                .clone()
                .ok_or_else(|| format!("`{template}`: `{{cache_url}}` needs a `redis` cache the rig starts"))?,
            other => {
                return Err(format!(
                    "`{template}`: unknown placeholder `{{{other}}}` (known: {{rig}}, {{bench}}, {{listen}}, {{listen_host}}, {{listen_port}}, {{dir}}, {{mitigation}}, {{seed}}{})",
                    if env { ", {cache_url}" } else { "" }
                ));
            }
        };
        out.push_str(&value);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> ExternalCfg {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn templates_expand_and_unknown_placeholders_are_named() {
        let v = Vars {
            cache_url: Some("redis://u:p@127.0.0.1:7".into()),
            ..Vars::probe()
        };
        assert_eq!(expand("--listen={listen}", &v, false).unwrap(), "--listen=127.0.0.1:1");
        assert_eq!(expand("{{literal}}", &v, false).unwrap(), "{literal}");
        assert_eq!(expand("{cache_url}", &v, true).unwrap(), "redis://u:p@127.0.0.1:7");
        let e = expand("{cache_url}", &v, false).unwrap_err();
        assert!(e.contains("unknown placeholder `{cache_url}`"), "{e}");
        let e = expand("--port {prot}", &v, false).unwrap_err();
        assert!(e.contains("unknown placeholder `{prot}`"), "{e}");
        assert!(expand("a { b", &v, false).unwrap_err().contains("unmatched"));
    }

    #[test]
    fn a_cache_password_on_the_command_line_is_refused() {
        let c = cfg("command: [cloud, --redis, '{cache_url}']\n");
        let p = c.problems(true, "redis");
        assert!(p.iter().any(|m| m.contains("readable by every local user")), "{p:?}");
        let ok = cfg("command: [cloud]\nenv: { URL: '{cache_url}' }\n");
        assert_eq!(ok.problems(true, "redis"), Vec::<String>::new());
    }

    #[test]
    fn an_external_cloud_needs_the_real_clock_a_reachable_cache_and_one_way_in() {
        let c = cfg("command: [cloud]\n");
        assert!(c.problems(false, "redis")[0].contains("clock: real"));
        assert!(c.problems(true, "memory")[0].contains("in-process `memory` cache"));
        // An attached cloud keeps its own cache.
        let attached = cfg("attach: '127.0.0.1:5684'\n");
        assert_eq!(attached.problems(true, "memory"), Vec::<String>::new());
        let both = cfg("command: [cloud]\nattach: '127.0.0.1:5684'\n");
        assert!(both.problems(true, "redis")[0].contains("not both"));
        let none = cfg("ready: port\n");
        assert!(none.problems(true, "redis")[0].contains("needs `command:`"));
        let bad = cfg("command: [c]\nlog: { connected: 'online (\\S+)' }\n");
        assert!(bad.problems(true, "redis")[0].contains("(?P<device>"));
    }
}
