//! The `nubo` binary: the all-in-one cloud (`up`), the control plane
//! (`server`), the compute agent (`agent`), and the client commands.

mod automation_cmds;
mod backup_cmds;
mod cli;
mod client_cmds;
mod console_cmds;
mod daemon;
mod hardware_cmds;
mod identity_cmds;
mod image_cmds;
mod lb_cmds;
mod monitoring_cmds;
mod network_cmds;
mod output;
mod provision_cmds;
mod relay;
mod restore_cmds;
mod storage_cmds;
mod tag_cmds;
mod task_cmds;
mod template_cmds;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // The relay runs once per guest connection, started by QEMU: no
    // runtime, no logging on the connection.
    if let cli::Command::ImdsRelay { socket } = &cli.command {
        return relay::run(socket);
    }
    let daemon_like = matches!(
        cli.command,
        cli::Command::Up(_)
            | cli::Command::Server(_)
            | cli::Command::Agent(_)
            | cli::Command::Lb(cli::LbCmd::Serve { .. })
    );
    if !daemon_like {
        // A client command piped into `head` should end quietly when the
        // pipe closes, like other Unix tools, instead of panicking in
        // println!. Daemons keep Rust's default (SIGPIPE ignored, EPIPE
        // returned), which their sockets rely on.
        // SAFETY: called before any thread starts; SIG_DFL is a valid handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if daemon_like { "info" } else { "warn" }));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::Command;
    match cli.command {
        Command::Up(a) => daemon::up(a).await,
        Command::Server(a) => daemon::server(a).await,
        Command::Agent(a) => daemon::agent(a).await,
        Command::Instance(c) => client_cmds::instance(c, &cli.conn).await,
        Command::Host(c) => client_cmds::host(c, &cli.conn).await,
        Command::Image(c) => client_cmds::image(c, &cli.conn).await,
        Command::Volume(c) => storage_cmds::volume(c, &cli.conn).await,
        Command::Snapshot(c) => storage_cmds::snapshot(c, &cli.conn).await,
        Command::Metrics(c) => monitoring_cmds::metrics(c, &cli.conn).await,
        Command::Check(c) => monitoring_cmds::check(c, &cli.conn).await,
        Command::Alert(c) => monitoring_cmds::alert(c, &cli.conn).await,
        Command::Event(c) => monitoring_cmds::event(c, &cli.conn).await,
        Command::Policy(c) => automation_cmds::policy(c, &cli.conn).await,
        Command::Group(c) => automation_cmds::group(c, &cli.conn).await,
        Command::Template(c) => template_cmds::template(c, &cli.conn).await,
        Command::Backup(c) => backup_cmds::backup(c, &cli.conn).await,
        Command::Lb(c) => lb_cmds::lb(c, &cli.conn).await,
        Command::Network(c) => network_cmds::network(c, &cli.conn).await,
        Command::FloatingIp(c) => network_cmds::floating_ip(c, &cli.conn).await,
        Command::SecurityGroup(c) => network_cmds::security_group(c, &cli.conn).await,
        Command::Tag(c) => tag_cmds::tag(c, &cli.conn).await,
        Command::Login(a) => identity_cmds::login(a, &cli.conn).await,
        Command::Token(c) => identity_cmds::token(c, &cli.conn).await,
        Command::Project(c) => identity_cmds::project(c, &cli.conn).await,
        Command::User(c) => identity_cmds::user(c, &cli.conn).await,
        Command::Audit(c) => identity_cmds::audit(c, &cli.conn).await,
        Command::Task(c) => task_cmds::task(c, &cli.conn).await,
        Command::AccessKey(c) => identity_cmds::access_key(c, &cli.conn).await,
        Command::Keypair(c) => provision_cmds::keypair(c, &cli.conn).await,
        Command::Recipe(c) => provision_cmds::recipe(c, &cli.conn).await,
        Command::Run(c) => provision_cmds::run(c, &cli.conn).await,
        Command::ImdsRelay { .. } => Ok(()),
    }
}
