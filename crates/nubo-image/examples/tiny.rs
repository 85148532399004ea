//! Developer tool: builds (or finds) the `tiny` image and optionally writes a
//! NoCloud seed, printing the paths a QEMU command line needs.
//!
//! ```text
//! cargo run -p nubo-image --example tiny -- CACHE_DIR [--rebuild] [--seed SEED.img INSTANCE_ID HOSTNAME [USER_DATA_FILE]]
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use nubo_image::seed::{write_nocloud_seed, SeedData};
use nubo_image::ImageCache;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.first() else {
        eprintln!("usage: tiny CACHE_DIR [--rebuild] [--seed SEED.img INSTANCE_ID HOSTNAME [USER_DATA_FILE]]");
        return ExitCode::from(2);
    };
    let cache = ImageCache::new(PathBuf::from(root));
    let mut progress = |msg: &str| eprintln!("[nubo-image] {msg}");
    let result = if args.iter().any(|a| a == "--rebuild") {
        cache.build("tiny", &mut progress)
    } else {
        cache.ensure("tiny", &mut progress)
    };
    let image = match result {
        Ok(image) => image,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    // Ignore write errors (e.g. a closed pipe): the output is informational.
    let _ = writeln!(
        out,
        "sha256={}\nkernel={}\ninitrd={}\ndisk={}\ncmdline={}",
        image.sha256,
        image.kernel.display(),
        image.initrd.display(),
        image.disk.display(),
        image.cmdline
    );

    if let Some(pos) = args.iter().position(|a| a == "--seed") {
        let rest = &args[pos + 1..];
        if rest.len() < 3 {
            eprintln!("--seed needs SEED.img INSTANCE_ID HOSTNAME [USER_DATA_FILE]");
            return ExitCode::from(2);
        }
        let user_data = match rest.get(3).map(std::fs::read_to_string).transpose() {
            Ok(u) => u,
            Err(e) => {
                eprintln!("error: reading user-data: {e}");
                return ExitCode::FAILURE;
            }
        };
        let data = SeedData {
            instance_id: rest[1].clone(),
            hostname: rest[2].clone(),
            user_data,
            public_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample nubo@example".into()],
        };
        if let Err(e) = write_nocloud_seed(std::path::Path::new(&rest[0]), &data) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        let _ = writeln!(out, "seed={}", rest[0]);
    }
    ExitCode::SUCCESS
}
