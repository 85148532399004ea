//! The application layer: every operation a user, the EC2 API, the
//! portal or a background task can ask of the cloud, one module per
//! resource. An operation takes the caller (who, which project, which
//! role), typed params, and returns domain values: rows or the API's
//! views. It knows nothing of HTTP: no extractor, no status code, no
//! `Json`. The REST handlers (`api/`), the EC2 API (`ec2/`), the portal
//! (`portal/`) and the background tasks (`background/`) are adapters over
//! it, and none of them calls another.
//!
//! Errors are `AppError`s; each adapter renders them its own way (REST as
//! JSON with a status, EC2 as its XML error codes, the portal as a page).

pub mod automation;
pub mod backup_verification;
pub mod backups;
pub mod cdrom;
pub mod consoles;
pub mod day_two;
pub mod floating_ips;
pub mod hardware;
pub mod host_desired;
pub mod hosts;
pub mod identity;
pub mod image_imports;
pub mod images;
pub mod instance_attributes;
pub mod instances;
pub mod launch_templates;
pub mod load_balancers;
pub mod migrations;
pub mod monitoring;
pub mod networks;
pub mod provisioning;
pub mod restores;
pub mod tags;
pub mod volumes;
