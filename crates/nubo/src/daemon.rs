//! The long-running commands: `nubo up`, `nubo server`, `nubo agent`.
//! `up` runs the control plane and an agent in one process, but the agent
//! still reaches the control plane over HTTP with its own credential,
//! exactly as a remote agent does.

use crate::cli::{AgentArgs, AgentOpts, ServerArgs, UpArgs};
use crate::cli::{GuestEgress, HypervisorKind};
use anyhow::Context;
use nubo_agent::identity::write_private;
use nubo_agent::{Agent, AgentConfig};
use nubo_controlplane::tls::{ServedCa, TlsFiles};
use nubo_controlplane::{identity, Config, Ctx};
use nubo_hypervisor::{detect_accel, AccelPreference, Qemu};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("nubo");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/nubo")
}

/// Reuses the admin token saved in admin.env if it is still valid,
/// else issues a new one. Tokens are stored hashed, so the plain text
/// lives only in that 0600 file.
async fn ensure_admin_token(ctx: &Ctx, env_file: &Path) -> anyhow::Result<String> {
    if let Some(tok) = std::fs::read_to_string(env_file).ok().and_then(|s| env_value(&s, "NUBO_TOKEN")) {
        if let Some(owner) = ctx.store.token_owner(&tok).await? {
            if owner.user_name == identity::BOOTSTRAP_ADMIN {
                return Ok(tok);
            }
        }
    }
    ctx.bootstrap_admin_token().await
}

fn env_value(s: &str, key: &str) -> Option<String> {
    s.lines().find_map(|l| {
        let l = l.strip_prefix("export ").unwrap_or(l);
        l.strip_prefix(key)?.strip_prefix('=').map(|v| v.trim().trim_matches('\'').to_string())
    })
}

struct Started {
    ctx: Arc<Ctx>,
    url: String,
    data_dir: PathBuf,
    admin_token: String,
    /// The admin's EC2 access key id and secret.
    access_key: (String, String),
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The CA clients must trust, when the server made its own (`--tls`).
    ca_cert: Option<PathBuf>,
}

async fn start_server(a: &ServerArgs) -> anyhow::Result<Started> {
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut config = Config::new(data_dir.clone());
    config.policy.cpu_overcommit = a.cpu_overcommit;
    config.heartbeat_timeout = Duration::from_secs(a.heartbeat_timeout_secs.max(11));
    config.policy.memory_overcommit = a.memory_overcommit;
    config.port_range = a.port_range;
    config.rate_per_sec = a.api_rate_limit;
    config.login_attempts_per_user = a.login_attempts_per_user;
    config.login_attempts_per_source = a.login_attempts_per_source;
    config.max_tokens_per_user = a.max_tokens_per_user;
    config.max_token_lifetime = a.max_token_lifetime;
    config.audit_retention = a.audit_retention;
    config.anonymous_audit_per_min = a.anonymous_audit_per_minute;
    config.database = a.database.clone();
    config.webhook_allow = a.webhook_allow.clone();
    config.max_alert_rules_per_project = a.max_alert_rules_per_project;
    config.max_policies_per_project = a.max_policies_per_project;
    config.image_quota_bytes = a.image_quota;
    config.max_image_bytes = a.max_image_size;
    config.web_assets = a.web_assets.clone();
    config.image_url_allow = a.image_url_allow.clone();
    config.metrics = nubo_controlplane::metrics_remote::MetricsRemoteConfig {
        remote_write: a.metrics_remote_write.clone(),
        read_from: a.metrics_read_from.clone(),
        embedded: a.metrics_store == crate::cli::MetricsStore::Embedded,
    };
    config.metrics.validate()?;
    config.policy.weigher = a.weigher.parse().map_err(anyhow::Error::msg)?;
    if let Some(path) = &a.ldap_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the LDAP configuration {}", path.display()))?;
        let ldap: nubo_controlplane::ldap::LdapConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid LDAP configuration", path.display()))?;
        ldap.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.ldap = Some(ldap);
    }
    if let Some(path) = &a.instance_types {
        config.instance_types = nubo_controlplane::instance_types::InstanceTypes::load(path)?;
    }
    // Settled before the state opens, so that every join token minted
    // names the CA.
    let tls = tls_files(a, &data_dir)?;
    if let Some(ca) = tls.as_ref().and_then(|f| f.ca.as_ref()) {
        config.tls_ca = Some(ServedCa::load(ca)?);
    }
    let ctx = Ctx::new(config).await?;
    ctx.start_background();
    let admin_token = ensure_admin_token(&ctx, &data_dir.join("admin.env")).await?;
    // The admin's EC2 access key, reused across restarts like the token.
    let known = std::fs::read_to_string(data_dir.join("admin.env"))
        .ok()
        .and_then(|s| Some((env_value(&s, "AWS_ACCESS_KEY_ID")?, env_value(&s, "AWS_SECRET_ACCESS_KEY")?)));
    let access_key = ctx.bootstrap_admin_access_key(known).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another Nubo running? choose another --listen", a.listen))?;
    let addr = listener.local_addr()?;
    let (url, ca_cert, server) = match tls {
        Some(files) => {
            let config = files.server_config()?;
            (
                format!("https://{addr}"),
                files.ca,
                tokio::spawn(nubo_controlplane::serve_tls(ctx.clone(), listener, config)),
            )
        }
        None => (format!("http://{addr}"), None, tokio::spawn(nubo_controlplane::serve(ctx.clone(), listener))),
    };
    Ok(Started { ctx, url, data_dir, admin_token, access_key, server, ca_cert })
}

/// The certificate to serve, if any: the operator's (`--tls-cert`), else
/// one from Nubo's own CA with `--tls` or on any address beyond loopback,
/// since join tokens, host credentials, API tokens and sessions would
/// otherwise cross a network in clear. Plain HTTP there takes
/// `--insecure-http`, and a warning.
fn tls_files(a: &ServerArgs, data_dir: &Path) -> anyhow::Result<Option<TlsFiles>> {
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        return Ok(Some(TlsFiles::provided(cert.clone(), key.clone())));
    }
    let beyond_loopback = !a.listen.ip().is_loopback();
    if a.tls || (beyond_loopback && !a.insecure_http) {
        // The certificate's names depend only on the address, not the port.
        return Ok(Some(TlsFiles::generated(data_dir, a.listen)?));
    }
    if beyond_loopback {
        tracing::warn!(
            listen = %a.listen,
            "serving plain HTTP beyond loopback (--insecure-http): join tokens, host credentials, API tokens and \
             sessions cross the network in clear; drop --insecure-http to serve HTTPS with a CA of Nubo's own"
        );
    }
    Ok(None)
}

fn write_admin_env(s: &Started) -> anyhow::Result<PathBuf> {
    let path = s.data_dir.join("admin.env");
    let mut text = format!("export NUBO_URL='{}'\nexport NUBO_TOKEN='{}'\n", s.url, s.admin_token);
    if let Some(ca) = &s.ca_cert {
        text.push_str(&format!("export {}='{}'\n", nubo_client::CA_CERT_ENV, ca.display()));
    }
    // The EC2 API on the same listener: `aws --endpoint-url $NUBO_URL ec2 ...`.
    text.push_str(&format!(
        "export AWS_ACCESS_KEY_ID='{}'\nexport AWS_SECRET_ACCESS_KEY='{}'\nexport AWS_DEFAULT_REGION='{}'\n",
        s.access_key.0, s.access_key.1, s.ctx.config.region
    ));
    write_private(&path, &text)?;
    Ok(path)
}

fn agent_config(
    opts: &AgentOpts,
    server_url: &str,
    join_token: Option<String>,
    data_dir: &Path,
    ca_cert: Option<PathBuf>,
) -> anyhow::Result<AgentConfig> {
    let disk_gib = match opts.disk_gib {
        Some(gib) => gib,
        None => data_dir_disk_gib(data_dir)?,
    };
    let host_name = opts.host_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    });
    Ok(AgentConfig {
        server_url: server_url.to_string(),
        join_token,
        data_dir: data_dir.to_path_buf(),
        image_cache: opts.image_cache.clone().unwrap_or_else(|| data_dir.join("images")),
        name: host_name,
        vcpus: opts.vcpus.unwrap_or_else(nubo_agent::capacity::cpus),
        memory_mib: opts.memory_mib.unwrap_or_else(nubo_agent::capacity::memory_mib),
        disk_gib,
        interval: Duration::from_millis(500),
        stop_grace: Duration::from_secs(opts.stop_grace_secs),
        ca_cert,
        insecure_http: false,
        // QEMU runs this binary as the metadata relay for each guest connection.
        metadata_relay: std::env::current_exe()
            .ok()
            .map(|exe| vec![exe.display().to_string(), "imds-relay".to_string()]),
        metrics_interval: Duration::from_secs(opts.metrics_interval_secs.max(1)),
        network: opts.underlay.map(|underlay| nubo_agent::network::NetworkConfig {
            underlay,
            netns: opts.netns.clone(),
            externals: opts.externals.iter().cloned().collect(),
            resolvers: opts.resolvers.clone(),
        }),
        shared_storage: opts.shared_storage.clone(),
        guard: None,
        migration_address: match (opts.migration_address, opts.underlay, &opts.netns) {
            (Some(a), _, _) => a.to_string(),
            (None, Some(u), None) => u.to_string(),
            _ => "127.0.0.1".to_string(),
        },
        plugin_dirs: if opts.plugin_dirs.is_empty() {
            nubo_agent::checks::default_plugin_dirs()
        } else {
            opts.plugin_dirs.clone()
        },
    })
}

/// The size of the file system the host's disks will live on. The data
/// directory is made first and then measured, rather than measuring its
/// nearest existing ancestor: the directory is what root disks, volumes
/// and images go into, so measuring it measures exactly their file system
/// (whatever is or gets mounted on the way), and the agent needs it made
/// anyway. On a fresh host it did not exist yet, the measure failed, and
/// the host offered 0 GiB until its next start.
fn data_dir_disk_gib(data_dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    nubo_agent::capacity::disk_gib(data_dir).with_context(|| {
        format!(
            "cannot measure the file system of the data dir {}: pass --disk-gib to say how much disk this host offers",
            data_dir.display()
        )
    })
}

fn make_agent(opts: &AgentOpts, mut config: AgentConfig) -> anyhow::Result<Agent> {
    let pref: AccelPreference = opts.accel.parse().map_err(|e| anyhow::anyhow!("--accel: {e}"))?;
    let accel = detect_accel(pref)?;
    let hypervisor: Arc<dyn nubo_hypervisor::Hypervisor> = match opts.hypervisor {
        HypervisorKind::Qemu => {
            let mut qemu = Qemu::new(&opts.qemu, "qemu-img")
                .with_console_cap(opts.console_max_bytes)
                .with_restricted_egress(opts.guest_egress == GuestEgress::Off);
            if opts.guest_egress == GuestEgress::Off {
                tracing::info!("guest egress is off: user-mode guests reach only their forwarded ports and metadata");
            }
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
            let host = nubo_agent::identity::load_or_create(&config.data_dir)?;
            match nubo_agent::guard::GuestGuard::install(host.as_str()) {
                Ok(guard) => {
                    qemu = qemu.with_cgroup(guard.cgroup_dir());
                    config.guard = Some(guard);
                }
                Err(e) if opts.insecure_guest_host_access => tracing::warn!(
                    host = %host,
                    error = %e,
                    "guests are NOT confined (--insecure-guest-host-access): every guest can reach every listener on this host's addresses, including the control plane"
                ),
                Err(e) => anyhow::bail!(
                    "cannot keep guests from this host's own listeners: {e}. Fix that, or pass --insecure-guest-host-access to run with guests able to reach every service on this host (test machines only)"
                ),
            }
            Arc::new(qemu)
        }
        HypervisorKind::Simulated => {
            tracing::warn!("the simulated hypervisor starts no VM; use it only to measure the control plane");
            Arc::new(nubo_hypervisor::Simulated::new(Duration::from_millis(200), nubo_api::BOOT_COMPLETE_MARKER))
        }
    };
    Agent::new(config, accel, hypervisor)
}

/// Builds the default image with progress on stderr, if missing.
async fn ensure_tiny(cache: PathBuf) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let images = nubo_image::ImageCache::new(cache);
        if images.lookup("tiny")?.is_none() {
            eprintln!("building the tiny image from Debian's packages (first start only)...");
            images.ensure("tiny", &mut |msg| eprintln!("  image: {msg}"))?;
        }
        anyhow::Ok(())
    })
    .await?
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The all-in-one host network's bridge, and the external network (and
/// its interface name) it becomes.
const HOST_BRIDGE: &str = "nubo0";
const HOST_NETWORK: &str = "host";

/// `nubo up`'s networking. As root: the host network (see
/// [`nubo_agent::network::HostBridge`]), which also turns on the agent's
/// bridged networking (its underlay, unless given, is the bridge's
/// address). Otherwise, or when the bridge cannot be made, user-mode
/// networking, and the operator is told so and why.
async fn host_network(a: &mut UpArgs) -> anyhow::Result<Option<nubo_agent::network::HostBridge>> {
    if a.no_host_network {
        return Ok(None);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "Not running as root: instances get user-mode networking, reachable only through ports forwarded on 127.0.0.1. \
             Run `sudo nubo up` for a network whose addresses this machine reaches directly."
        );
        return Ok(None);
    }
    let bridge = nubo_agent::network::HostBridge::new(HOST_BRIDGE, &a.host_network)?;
    if let Err(e) = bridge.ensure(a.agent.netns.as_deref()).await {
        println!(
            "Cannot make the host network {}: {e}. Instances get user-mode networking instead; \
             fix the cause, or pass --no-host-network to say that is what you want.",
            bridge.cidr()
        );
        return Ok(None);
    }
    a.agent.underlay.get_or_insert(bridge.address);
    if !a.agent.externals.iter().any(|(name, _)| name == HOST_NETWORK) {
        a.agent.externals.push((HOST_NETWORK.to_string(), bridge.name.clone()));
    }
    println!(
        "Host network {} on bridge {} (this machine is {}): instances get addresses of it that this machine reaches.",
        bridge.cidr(),
        bridge.name,
        bridge.address
    );
    Ok(Some(bridge))
}

/// `--netns`, `--external` and `--resolver` are settings of bridged
/// networking, which `--underlay` turns on.
fn check_network_opts(opts: &AgentOpts) -> anyhow::Result<()> {
    if opts.underlay.is_none() && (opts.netns.is_some() || !opts.externals.is_empty() || !opts.resolvers.is_empty()) {
        anyhow::bail!(
            "--netns, --external and --resolver need bridged networking: give --underlay (this host's address on the network that joins the hosts)"
        );
    }
    Ok(())
}

/// Makes the external network `host` on the host network's range at the
/// first start, as the admin (see `app::networks::ensure_host_network`).
async fn ensure_host_external_network(s: &Started, bridge: &nubo_agent::network::HostBridge) -> anyhow::Result<()> {
    let caller = nubo_controlplane::auth::token_caller(&s.ctx, &s.admin_token)
        .await?
        .context("the admin token was not accepted; delete admin.env from the data directory and start again")?;
    let made = nubo_controlplane::app::networks::ensure_host_network(
        &s.ctx,
        &caller,
        HOST_NETWORK,
        &bridge.cidr(),
        &bridge.address.to_string(),
        &bridge.pool(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot make the external network {HOST_NETWORK}: {e}"))?;
    if let Some(n) = made {
        let auto = n.external.as_ref().is_some_and(|e| e.auto_assign);
        println!(
            "Made external network {HOST_NETWORK} ({}){}.",
            n.cidr,
            if auto { ", which gives each instance on its default network an address of it" } else { "" }
        );
    }
    Ok(())
}

pub async fn up(mut a: UpArgs) -> anyhow::Result<()> {
    let host_net = host_network(&mut a).await?;
    check_network_opts(&a.agent)?;
    let s = start_server(&a.server).await?;
    // The local agent joins like any other host: with a one-time token,
    // traded for its own credential on first start.
    let join = match nubo_agent::identity::load_credential(&s.data_dir)? {
        Some(_) => None,
        None => Some(s.ctx.store.create_join_token(600 * 1000).await?.0),
    };
    // Over HTTPS the local agent trusts the generated CA, else (operator's
    // certificate) whatever NUBO_CA_CERT names.
    let ca_cert = s
        .ca_cert
        .clone()
        .or_else(|| std::env::var_os(nubo_client::CA_CERT_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
    let mut config = agent_config(&a.agent, &s.url, join, &s.data_dir, ca_cert)?;
    // The local agent follows the server's choice of plain HTTP.
    config.insecure_http = a.server.insecure_http;
    ensure_tiny(config.image_cache.clone()).await?;
    let agent = make_agent(&a.agent, config)?;
    let guard = agent.config.guard.clone();
    let host = agent.host_id.clone();
    let agent_task = tokio::spawn(agent.run());
    // Ready once our own host is registered and reporting.
    for _ in 0..200 {
        if s.ctx.store.host(host.as_str()).await?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(bridge) = &host_net {
        ensure_host_external_network(&s, bridge).await?;
    }
    let env = write_admin_env(&s)?;
    println!("Nubo is up at {} (host {host}).", s.url);
    println!("Use it from another shell:  . {} && nubo instance run --image tiny --wait", env.display());
    tokio::select! {
        r = s.server => { r??; }
        r = agent_task => { r??; }
        _ = shutdown_signal() => {
            eprintln!("stopping Nubo; running VMs keep running and are re-adopted at the next start");
            nubo_controlplane::background::shutdown(&s.ctx).await;
        }
    }
    if let Some(g) = guard {
        g.remove();
    }
    Ok(())
}

pub async fn server(a: ServerArgs) -> anyhow::Result<()> {
    let s = start_server(&a).await?;
    let env = write_admin_env(&s)?;
    let (join, _) = s.ctx.mint_join_token(3600 * 1000).await?;
    let join_file = s.data_dir.join("join.token");
    write_private(&join_file, &format!("{join}\n"))?;
    println!("Nubo control plane at {}; admin credentials in {}", s.url, env.display());
    if let Some(ca) = &s.ctx.config.tls_ca {
        println!("Its CA's SHA-256 fingerprint (join tokens carry it): {}", ca.fingerprint);
    }
    println!(
        "Join a compute host (one-time token, valid 1 h, also in {}; more with `nubo host join-token`):",
        join_file.display()
    );
    // The token names the CA, so an agent needs nothing else to check the
    // server; plain HTTP beyond loopback takes the agent's consent too.
    let insecure = if a.insecure_http && !a.listen.ip().is_loopback() { " --insecure-http" } else { "" };
    println!("  nubo agent --server {}{insecure} --join-token {join}", s.url);
    tokio::select! {
        r = s.server => { r??; }
        _ = shutdown_signal() => nubo_controlplane::background::shutdown(&s.ctx).await,
    }
    Ok(())
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<()> {
    check_network_opts(&a.opts)?;
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut config = agent_config(&a.opts, &a.server, a.join_token.clone(), &data_dir, a.ca_cert.clone())?;
    config.insecure_http = a.insecure_http;
    let agent = make_agent(&a.opts, config)?;
    let guard = agent.config.guard.clone();
    let result = tokio::select! {
        r = agent.run() => r,
        _ = shutdown_signal() => Ok(()),
    };
    if let Some(g) = guard {
        g.remove();
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_values_back_from_admin_env() {
        let s = "export NUBO_URL='http://x'\nexport NUBO_TOKEN='nubo_abc'\n";
        assert_eq!(super::env_value(s, "NUBO_TOKEN").as_deref(), Some("nubo_abc"));
        assert_eq!(super::env_value(s, "NUBO_URL").as_deref(), Some("http://x"));
        assert_eq!(super::env_value(s, "NOPE"), None);
    }

    #[test]
    fn a_data_dir_not_made_yet_is_made_and_measured() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("nubo").join("agent");
        let gib = super::data_dir_disk_gib(&fresh).unwrap();
        assert!(fresh.is_dir());
        // The same file system as its parent, which exists.
        assert_eq!(gib, nubo_agent::capacity::disk_gib(tmp.path()).unwrap());
        assert!(gib >= 1, "a real file system has at least 1 GiB");
    }
}
