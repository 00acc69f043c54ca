//! `[checks.NAME]`: the health checks (protocol probes, tcp, Nagios plugins) and their checks.

use super::*;

/// `[checks.NAME]`: one health check, run by every mail node against its own services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Protocol spoken by the probe: smtp, submission, smtps, imap, imaps, pop3, pop3s, lmtp,
    /// tcp (connect only) or exec (run a Nagios-style plugin).
    pub kind: CheckKind,
    /// TCP port probed on the local node. Defaults from `kind` (smtp 25, submission 587,
    /// smtps 465, imap 143, imaps 993, pop3 110, pop3s 995, lmtp 24). Required for tcp,
    /// not allowed for exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between two probes. Default "1s".
    #[serde(default = "default_check_interval")]
    pub interval: Millis,
    /// How long one probe may take before it counts as failed. At most `interval`. Default "1s".
    #[serde(default = "default_check_timeout")]
    pub timeout: Millis,
    /// Time between two probes while the check is changing state: after a failure while the
    /// service is up, or a pass while it is down (HAProxy's `fastinter`). A first failure is
    /// confirmed or cleared this soon, without probing more often while all is well. At most
    /// `interval`. Default "100ms".
    #[serde(default = "default_check_fast_interval")]
    pub fast_interval: Millis,
    /// Watch the kernel's listening sockets (netlink sock_diag, every 100 ms, no packet to the
    /// service) and probe at once when the checked port stops or starts listening, so a stopped
    /// service is seen within a tenth of a second. The probe still decides; a refused
    /// connection is decisive. Ignored for exec checks. Default true.
    #[serde(default = "default_true")]
    pub watch_listener: bool,
    /// Consecutive passes before a failing service counts as healthy again. At least 1. Default 2.
    #[serde(default = "default_rise_fall")]
    pub rise: u32,
    /// Consecutive failures before a healthy service counts as failed. At least 1. Default 2.
    #[serde(default = "default_rise_fall")]
    pub fall: u32,
    /// Upgrade the connection with STARTTLS before the protocol exchange. Only for smtp,
    /// submission, imap and pop3. Default false.
    #[serde(default)]
    pub starttls: bool,
    /// Test account the probe logs in with; a failed login is reported as degraded, not failed
    /// over. Only for imap, imaps, pop3 and pop3s; requires `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
    /// Absolute path of a file holding the password of `login_user` (first line). Requires
    /// `login_user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// For exec only, and required there: the program (absolute path) and its arguments, run
    /// without a shell. Exit code 0 = OK, 1 = warning, 2 = critical, anything else = unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Postfix queue depth (from `postqueue -j`) above which the node is reported degraded.
    /// Optional; only for smtp, submission and smtps. At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_threshold: Option<u64>,
    /// The program (absolute path) and arguments that print the postfix queue as JSON, one
    /// line per message, like `postqueue -j`. Only with `queue_threshold`. Default
    /// ["/usr/sbin/postqueue", "-j"]; add "-c", "/etc/postfix-out" for a second instance.
    /// Run in the background, one read at a time, killed after 10 s; each probe reports the
    /// latest finished reading, so a slow queue never delays the service verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_command: Option<Vec<String>>,
    /// Address the probe connects to. Default "127.0.0.1": the node's own service (dovecot
    /// and postfix listen on all addresses, or on this one).
    #[serde(default = "default_check_host")]
    pub host: IpAddr,
    /// PEM file of CA certificates (absolute path). With it, a TLS probe (smtps, imaps, pop3s,
    /// or starttls) also verifies the certificate chain and name. Without it the probe proves
    /// the TLS handshake works and watches the expiry date, but not who issued the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Name sent as SNI and, with `tls_ca_file`, required in the certificate. Default: the
    /// host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// A TLS probe warns (degraded, no failover) when the certificate expires within this
    /// long. Default "14d".
    #[serde(default = "default_cert_warning")]
    pub cert_warning: Millis,
}

impl CheckConfig {
    /// A check of `kind` with every other field at its default.
    pub fn new(kind: CheckKind) -> Self {
        CheckConfig {
            kind,
            port: None,
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            fast_interval: default_check_fast_interval(),
            watch_listener: true,
            rise: default_rise_fall(),
            fall: default_rise_fall(),
            starttls: false,
            login_user: None,
            password_file: None,
            command: None,
            queue_threshold: None,
            queue_command: None,
            host: default_check_host(),
            tls_ca_file: None,
            tls_server_name: None,
            cert_warning: default_cert_warning(),
        }
    }

    /// Whether this check speaks TLS (implicit, or upgraded with STARTTLS).
    pub fn uses_tls(&self) -> bool {
        self.starttls
            || matches!(
                self.kind,
                CheckKind::Smtps | CheckKind::Imaps | CheckKind::Pop3s
            )
    }
}

impl CheckConfig {
    /// The port the probe connects to: `port`, or the default of `kind`. `None` for exec (and for
    /// a tcp check without a port, which `validate` refuses).
    pub fn effective_port(&self) -> Option<u16> {
        if self.kind == CheckKind::Exec {
            return None;
        }
        self.port.or(self.kind.default_port())
    }
}

/// The protocol a health check speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// SMTP on port 25: banner, EHLO, NOOP, QUIT.
    Smtp,
    /// SMTP submission on port 587.
    Submission,
    /// SMTP with implicit TLS on port 465.
    Smtps,
    /// IMAP on port 143: `* OK` greeting, CAPABILITY, LOGOUT.
    Imap,
    /// IMAP with implicit TLS on port 993.
    Imaps,
    /// POP3 on port 110: `+OK` greeting.
    Pop3,
    /// POP3 with implicit TLS on port 995.
    Pop3s,
    /// LMTP on port 24.
    Lmtp,
    /// Plain TCP connect; needs an explicit port.
    Tcp,
    /// Run a Nagios-style plugin.
    Exec,
}

impl CheckKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [CheckKind; 10] = [
        CheckKind::Smtp,
        CheckKind::Submission,
        CheckKind::Smtps,
        CheckKind::Imap,
        CheckKind::Imaps,
        CheckKind::Pop3,
        CheckKind::Pop3s,
        CheckKind::Lmtp,
        CheckKind::Tcp,
        CheckKind::Exec,
    ];

    /// The well-known port of the protocol; `None` for tcp and exec.
    pub fn default_port(self) -> Option<u16> {
        match self {
            CheckKind::Smtp => Some(25),
            CheckKind::Submission => Some(587),
            CheckKind::Smtps => Some(465),
            CheckKind::Imap => Some(143),
            CheckKind::Imaps => Some(993),
            CheckKind::Pop3 => Some(110),
            CheckKind::Pop3s => Some(995),
            CheckKind::Lmtp => Some(24),
            CheckKind::Tcp | CheckKind::Exec => None,
        }
    }

    /// Whether `starttls = true` is meaningful for this kind.
    pub fn supports_starttls(self) -> bool {
        matches!(
            self,
            CheckKind::Smtp | CheckKind::Submission | CheckKind::Imap | CheckKind::Pop3
        )
    }

    /// Whether `login_user`/`password_file` are meaningful for this kind.
    pub fn supports_login(self) -> bool {
        matches!(
            self,
            CheckKind::Imap | CheckKind::Imaps | CheckKind::Pop3 | CheckKind::Pop3s
        )
    }

    /// Whether `queue_threshold` (postfix queue depth) is meaningful for this kind.
    pub fn supports_queue_threshold(self) -> bool {
        matches!(
            self,
            CheckKind::Smtp | CheckKind::Submission | CheckKind::Smtps
        )
    }

    fn list(pred: impl Fn(CheckKind) -> bool) -> String {
        CheckKind::ALL
            .iter()
            .filter(|k| pred(**k))
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Smtp => "smtp",
            CheckKind::Submission => "submission",
            CheckKind::Smtps => "smtps",
            CheckKind::Imap => "imap",
            CheckKind::Imaps => "imaps",
            CheckKind::Pop3 => "pop3",
            CheckKind::Pop3s => "pop3s",
            CheckKind::Lmtp => "lmtp",
            CheckKind::Tcp => "tcp",
            CheckKind::Exec => "exec",
        })
    }
}

impl Config {
    pub(super) fn check_checks(&self, v: &mut Problems) {
        for (name, c) in &self.checks {
            let f = format!("checks.{name}");
            check_name(v, &f, name, "check name");
            let k = c.kind;
            match (k, c.port) {
                (CheckKind::Tcp, None) => v.push(
                    format!("{f}.port"),
                    "a tcp check has no default port; add port = N, the port to connect to"
                        .to_string(),
                ),
                (CheckKind::Exec, Some(p)) => v.push(
                    format!("{f}.port"),
                    format!(
                        "port = {p} is not used by an exec check; remove it and pass the port \
                         to the plugin in command instead"
                    ),
                ),
                (_, Some(0)) => v.push(
                    format!("{f}.port"),
                    format!(
                        "port 0 cannot be probed; write the service's port{}",
                        k.default_port()
                            .map(|p| format!(" or remove the key to use the default {p}"))
                            .unwrap_or_default()
                    ),
                ),
                _ => {}
            }
            let mut durations_ok = true;
            for (key, d) in [
                ("interval", c.interval),
                ("timeout", c.timeout),
                ("fast_interval", c.fast_interval),
            ] {
                if d.get().is_zero() {
                    durations_ok = false;
                    v.push(
                        format!("{f}.{key}"),
                        format!("{d} is not a usable duration; write a positive one, e.g. \"1s\""),
                    );
                }
            }
            if durations_ok && c.timeout > c.interval {
                v.push(
                    format!("{f}.timeout"),
                    format!(
                        "timeout ({}) is longer than interval ({}), so probes would overlap; \
                         make timeout at most interval, e.g. timeout = \"{}\"",
                        c.timeout, c.interval, c.interval
                    ),
                );
            }
            if durations_ok && c.fast_interval > c.interval {
                v.push(
                    format!("{f}.fast_interval"),
                    format!(
                        "fast_interval ({}) is longer than interval ({}); it is the quicker \
                         pace while a check changes state, so make it at most interval \
                         (default \"100ms\")",
                        c.fast_interval, c.interval
                    ),
                );
            }
            for (key, n) in [("rise", c.rise), ("fall", c.fall)] {
                if n == 0 {
                    v.push(
                        format!("{f}.{key}"),
                        format!(
                            "{key} = 0 would never count a result; write at least 1 (default 2)"
                        ),
                    );
                }
            }
            if c.starttls && !k.supports_starttls() {
                v.push(
                    format!("{f}.starttls"),
                    format!(
                        "starttls applies only to kinds {}, not {k}; remove it{}",
                        CheckKind::list(CheckKind::supports_starttls),
                        if matches!(k, CheckKind::Smtps | CheckKind::Imaps | CheckKind::Pop3s) {
                            " (this kind already uses TLS from the start)"
                        } else {
                            ""
                        }
                    ),
                );
            }
            let has_login = c.login_user.is_some() || c.password_file.is_some();
            if has_login && !k.supports_login() {
                v.push(
                    format!(
                        "{f}.{}",
                        if c.login_user.is_some() {
                            "login_user"
                        } else {
                            "password_file"
                        }
                    ),
                    format!(
                        "a test login applies only to kinds {}, not {k}; remove login_user and \
                         password_file",
                        CheckKind::list(CheckKind::supports_login)
                    ),
                );
            } else {
                match (&c.login_user, &c.password_file) {
                    (Some(user), None) => v.push(
                        format!("{f}.password_file"),
                        format!(
                            "login_user = {user:?} needs the password too; add password_file = \
                             \"/etc/clusterd/probe.pass\" (a file holding the password)"
                        ),
                    ),
                    (None, Some(_)) => v.push(
                        format!("{f}.login_user"),
                        "password_file is set but login_user is not; add login_user = \"probe\" \
                         (the test account) or remove password_file"
                            .to_string(),
                    ),
                    _ => {}
                }
            }
            if c.login_user.as_ref().is_some_and(|u| u.trim().is_empty()) {
                v.push(
                    format!("{f}.login_user"),
                    "login_user is empty; write the test account's name, e.g. \"probe\""
                        .to_string(),
                );
            }
            if let Some(p) = &c.password_file {
                check_absolute(
                    v,
                    &format!("{f}.password_file"),
                    p,
                    "/etc/clusterd/probe.pass",
                );
            }
            match (k, &c.command) {
                (CheckKind::Exec, None) => v.push(
                    format!("{f}.command"),
                    "an exec check needs the program to run; add command = \
                     [\"/usr/lib/nagios/plugins/check_foo\", \"-x\"]"
                        .to_string(),
                ),
                (CheckKind::Exec, Some(cmd)) if cmd.is_empty() => v.push(
                    format!("{f}.command"),
                    "command is empty; write the program and its arguments, e.g. \
                     [\"/usr/lib/nagios/plugins/check_foo\", \"-x\"]"
                        .to_string(),
                ),
                (CheckKind::Exec, Some(cmd)) => {
                    if !Path::new(&cmd[0]).is_absolute() {
                        v.push(
                            format!("{f}.command"),
                            format!(
                                "the program {:?} is not an absolute path; commands run without \
                                 a shell or PATH search, so write the full path, e.g. \
                                 \"/usr/lib/nagios/plugins/{}\"",
                                cmd[0], cmd[0]
                            ),
                        );
                    }
                }
                (_, Some(_)) => v.push(
                    format!("{f}.command"),
                    format!(
                        "command applies only to kind = \"exec\", not {k}; remove it, or \
                         change kind to \"exec\""
                    ),
                ),
                (_, None) => {}
            }
            if let Some(q) = c.queue_threshold {
                if !k.supports_queue_threshold() {
                    v.push(
                        format!("{f}.queue_threshold"),
                        format!(
                            "queue_threshold (postfix queue depth) applies only to kinds {}, \
                             not {k}; remove it",
                            CheckKind::list(CheckKind::supports_queue_threshold)
                        ),
                    );
                } else if q == 0 {
                    v.push(
                        format!("{f}.queue_threshold"),
                        "0 would always warn; write at least 1, e.g. 1000".to_string(),
                    );
                }
            }
            match (&c.queue_command, c.queue_threshold) {
                (Some(_), None) => v.push(
                    format!("{f}.queue_command"),
                    "queue_command is only run to compare with queue_threshold; add \
                     queue_threshold = 1000 or remove queue_command"
                        .to_string(),
                ),
                (Some(cmd), Some(_)) if cmd.is_empty() || !Path::new(&cmd[0]).is_absolute() => v
                    .push(
                        format!("{f}.queue_command"),
                        "write the program as an absolute path and its arguments, e.g. \
                         [\"/usr/sbin/postqueue\", \"-c\", \"/etc/postfix\", \"-j\"]"
                            .to_string(),
                    ),
                _ => {}
            }
            if !c.uses_tls() {
                for (key, set) in [
                    ("tls_ca_file", c.tls_ca_file.is_some()),
                    ("tls_server_name", c.tls_server_name.is_some()),
                ] {
                    if set {
                        v.push(
                            format!("{f}.{key}"),
                            format!(
                                "{key} applies only to TLS probes (kinds smtps, imaps, pop3s, or \
                                 starttls = true); remove it or enable starttls"
                            ),
                        );
                    }
                }
            }
            if let Some(p) = &c.tls_ca_file {
                check_absolute(
                    v,
                    &format!("{f}.tls_ca_file"),
                    p,
                    "/etc/ssl/certs/mail-ca.pem",
                );
            }
            if let Some(n) = &c.tls_server_name
                && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
            {
                v.push(
                    format!("{f}.tls_server_name"),
                    format!(
                        "{n:?} is not a DNS name or IP address; write e.g. \"mail.example.com\""
                    ),
                );
            }
        }
    }

    pub(super) fn unknown_check_message(&self, service: &str) -> String {
        if self.checks.is_empty() {
            format!(
                "{service:?} names no check; there are no [checks.NAME] sections, so add \
                 [checks.{service}] with its kind, or remove it from the list"
            )
        } else {
            format!(
                "{service:?} names no check; write one of the [checks.NAME] names ({}), or \
                 add a [checks.{service}] section",
                join_quoted(self.checks.keys())
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{BASE, assert_refused, assert_valid, check, with_check};
    use super::*;

    #[test]
    fn check_ports_default_from_kind() {
        let expect = [
            (CheckKind::Smtp, Some(25)),
            (CheckKind::Submission, Some(587)),
            (CheckKind::Smtps, Some(465)),
            (CheckKind::Imap, Some(143)),
            (CheckKind::Imaps, Some(993)),
            (CheckKind::Pop3, Some(110)),
            (CheckKind::Pop3s, Some(995)),
            (CheckKind::Lmtp, Some(24)),
            (CheckKind::Tcp, None),
            (CheckKind::Exec, None),
        ];
        for (kind, port) in expect {
            assert_eq!(check(kind).effective_port(), port, "{kind}");
        }
        let mut explicit = check(CheckKind::Imap);
        explicit.port = Some(1143);
        assert_eq!(explicit.effective_port(), Some(1143));
    }

    #[test]
    fn check_name_outside_charset_refused() {
        let c = with_check("IMAP_2", check(CheckKind::Imap));
        assert_refused(&c, "checks.IMAP_2", "check name");
    }

    #[test]
    fn tcp_check_requires_port() {
        let c = with_check("sieve", check(CheckKind::Tcp));
        assert_refused(&c, "checks.sieve.port", "add port = N");
        let mut t = check(CheckKind::Tcp);
        t.port = Some(4190);
        assert_valid(&with_check("sieve", t));
    }

    #[test]
    fn exec_check_forbids_port() {
        let mut e = check(CheckKind::Exec);
        e.command = Some(vec!["/usr/lib/nagios/plugins/check_disk".into()]);
        assert_valid(&with_check("disk", e.clone()));
        e.port = Some(25);
        assert_refused(
            &with_check("disk", e),
            "checks.disk.port",
            "not used by an exec check",
        );
    }

    #[test]
    fn queue_command_needs_a_threshold_and_an_absolute_program() {
        let mut c = check(CheckKind::Smtp);
        c.queue_command = Some(vec!["/usr/sbin/postqueue".into(), "-j".into()]);
        assert_refused(
            &with_check("smtp", c.clone()),
            "checks.smtp.queue_command",
            "add queue_threshold",
        );
        c.queue_threshold = Some(100);
        assert_valid(&with_check("smtp", c.clone()));
        c.queue_command = Some(vec!["postqueue".into()]);
        assert_refused(
            &with_check("smtp", c),
            "checks.smtp.queue_command",
            "absolute path",
        );
    }

    #[test]
    fn tls_settings_only_on_tls_checks() {
        let mut c = check(CheckKind::Imap);
        c.tls_ca_file = Some("/etc/ssl/ca.pem".into());
        assert_refused(
            &with_check("imap", c.clone()),
            "checks.imap.tls_ca_file",
            "only to TLS probes",
        );
        c.tls_ca_file = None;
        c.tls_server_name = Some("mail.example.com".into());
        assert_refused(
            &with_check("imap", c.clone()),
            "checks.imap.tls_server_name",
            "only to TLS probes",
        );
        c.starttls = true;
        assert_valid(&with_check("imap", c.clone()));
        let mut i = check(CheckKind::Imaps);
        i.tls_ca_file = Some("ca.pem".into());
        assert_refused(
            &with_check("imaps", i.clone()),
            "checks.imaps.tls_ca_file",
            "absolute",
        );
        i.tls_ca_file = None;
        i.tls_server_name = Some("not a name!".into());
        assert_refused(
            &with_check("imaps", i),
            "checks.imaps.tls_server_name",
            "not a DNS name",
        );
    }

    #[test]
    fn check_host_and_cert_warning_parse_with_days() {
        let c = parse(&format!(
            "{BASE}\n[checks.imaps]\nkind = \"imaps\"\nhost = \"192.0.2.11\"\ncert_warning = \"30d\"\n"
        ))
        .unwrap();
        let i = &c.checks["imaps"];
        assert_eq!(i.host, "192.0.2.11".parse::<IpAddr>().unwrap());
        assert_eq!(i.cert_warning.as_millis(), 30 * 86_400_000);
        assert_eq!(
            c.checks["imap"].host,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn port_zero_check_refused() {
        let mut i = check(CheckKind::Imap);
        i.port = Some(0);
        assert_refused(&with_check("imap", i), "checks.imap.port", "default 143");
    }

    #[test]
    fn exec_check_requires_command() {
        let c = with_check("disk", check(CheckKind::Exec));
        assert_refused(&c, "checks.disk.command", "needs the program");
        let mut e = check(CheckKind::Exec);
        e.command = Some(vec![]);
        assert_refused(
            &with_check("disk", e),
            "checks.disk.command",
            "command is empty",
        );
    }

    #[test]
    fn exec_command_must_be_absolute() {
        let mut e = check(CheckKind::Exec);
        e.command = Some(vec!["check_disk".into(), "-w".into()]);
        assert_refused(
            &with_check("disk", e),
            "checks.disk.command",
            "absolute path",
        );
    }

    #[test]
    fn command_forbidden_for_protocol_checks() {
        let mut i = check(CheckKind::Imap);
        i.command = Some(vec!["/bin/true".into()]);
        assert_refused(
            &with_check("imap", i),
            "checks.imap.command",
            "only to kind = \"exec\"",
        );
    }

    #[test]
    fn zero_check_durations_refused() {
        let mut i = check(CheckKind::Imap);
        i.interval = Millis::from_millis(0);
        assert_refused(&with_check("imap", i), "checks.imap.interval", "positive");
        let mut i = check(CheckKind::Imap);
        i.timeout = Millis::from_millis(0);
        assert_refused(&with_check("imap", i), "checks.imap.timeout", "positive");
        let mut i = check(CheckKind::Imap);
        i.fast_interval = Millis::from_millis(0);
        assert_refused(
            &with_check("imap", i),
            "checks.imap.fast_interval",
            "positive",
        );
    }

    #[test]
    fn fast_interval_one_past_interval_refused() {
        let mut i = check(CheckKind::Imap);
        i.fast_interval = i.interval;
        assert!(with_check("imap", i.clone()).validate().is_ok());
        i.fast_interval = Millis::from_millis(i.interval.get().as_millis() as u64 + 1);
        assert_refused(
            &with_check("imap", i),
            "checks.imap.fast_interval",
            "at most interval",
        );
    }

    #[test]
    fn timeout_longer_than_interval_refused() {
        let mut i = check(CheckKind::Imap);
        i.timeout = Millis::from_millis(2000);
        assert_refused(
            &with_check("imap", i),
            "checks.imap.timeout",
            "at most interval",
        );
    }

    #[test]
    fn rise_and_fall_zero_refused() {
        let mut i = check(CheckKind::Imap);
        i.rise = 0;
        i.fall = 0;
        let c = with_check("imap", i);
        assert_refused(&c, "checks.imap.rise", "at least 1");
        assert_refused(&c, "checks.imap.fall", "at least 1");
    }

    #[test]
    fn starttls_only_for_plaintext_protocols() {
        for kind in [
            CheckKind::Smtp,
            CheckKind::Submission,
            CheckKind::Imap,
            CheckKind::Pop3,
        ] {
            let mut k = check(kind);
            k.starttls = true;
            assert_valid(&with_check("x", k));
        }
        let mut k = check(CheckKind::Imaps);
        k.starttls = true;
        assert_refused(&with_check("x", k), "checks.x.starttls", "already uses TLS");
        let mut k = check(CheckKind::Lmtp);
        k.starttls = true;
        assert_refused(&with_check("x", k), "checks.x.starttls", "not lmtp");
    }

    #[test]
    fn login_only_for_imap_and_pop3() {
        let mut s = check(CheckKind::Smtp);
        s.login_user = Some("probe".into());
        s.password_file = Some("/etc/clusterd/probe.pass".into());
        assert_refused(
            &with_check("x", s),
            "checks.x.login_user",
            "imap, imaps, pop3, pop3s",
        );
        let mut p = check(CheckKind::Pop3s);
        p.login_user = Some("probe".into());
        p.password_file = Some("/etc/clusterd/probe.pass".into());
        assert_valid(&with_check("x", p));
    }

    #[test]
    fn login_user_requires_password_file() {
        let mut i = check(CheckKind::Imap);
        i.login_user = Some("probe".into());
        assert_refused(
            &with_check("imap", i),
            "checks.imap.password_file",
            "needs the password",
        );
    }

    #[test]
    fn password_file_requires_login_user() {
        let mut i = check(CheckKind::Imap);
        i.password_file = Some("/etc/clusterd/probe.pass".into());
        assert_refused(
            &with_check("imap", i),
            "checks.imap.login_user",
            "login_user is not",
        );
    }

    #[test]
    fn relative_password_file_refused() {
        let mut i = check(CheckKind::Imap);
        i.login_user = Some("probe".into());
        i.password_file = Some("probe.pass".into());
        assert_refused(
            &with_check("imap", i),
            "checks.imap.password_file",
            "absolute path",
        );
    }

    #[test]
    fn queue_threshold_only_for_smtp_kinds() {
        let mut s = check(CheckKind::Smtps);
        s.queue_threshold = Some(1000);
        assert_valid(&with_check("x", s));
        let mut i = check(CheckKind::Imap);
        i.queue_threshold = Some(1000);
        assert_refused(
            &with_check("x", i),
            "checks.x.queue_threshold",
            "smtp, submission, smtps",
        );
        let mut z = check(CheckKind::Smtp);
        z.queue_threshold = Some(0);
        assert_refused(
            &with_check("x", z),
            "checks.x.queue_threshold",
            "at least 1",
        );
    }
}
