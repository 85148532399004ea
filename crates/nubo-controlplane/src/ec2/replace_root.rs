//! EC2's root volume replacement: CreateReplaceRootVolumeTask (a running
//! instance's root disk replaced through `app::day_two`: from `ImageId`
//! a rebuild, from `SnapshotId` (one of the instance's snapshots, which
//! Nubo keeps as images, CreateImage's `ami-...`) a revert, from neither
//! its current image) and DescribeReplaceRootVolumeTasks. Each task is
//! recorded; its state is read from the instance's life events since it
//! began: pending, in-progress once the host stops it, succeeded once it
//! runs on its new disk, failed if it ends in error. The replaced disk is
//! never kept (`deleteReplacedRootVolume` is always true).

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::Params;
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::auth::Caller;
use crate::authz::Access;
use crate::day_two::ReplaceRootTaskRow;
use crate::store::now_ms;
use crate::Ctx;
use nubo_api::ids::ReplaceRootVolumeTaskId;
use nubo_api::views::{InstanceEvent, InstanceState};
use std::sync::Arc;

/// A task's state and completion time, from the instance's state and its
/// events since the task began.
fn state_of(started_at_ms: i64, state: InstanceState, events: &[InstanceEvent]) -> (&'static str, Option<i64>) {
    let since: Vec<&InstanceEvent> = events.iter().filter(|e| e.at_ms >= started_at_ms).collect();
    let replaced = since.iter().position(|e| e.stage == "root_disk_removed");
    if state == InstanceState::Error || since.iter().any(|e| e.stage == "error") {
        return ("failed", since.last().map(|e| e.at_ms));
    }
    match replaced {
        Some(at) if state == InstanceState::Running => {
            let done = since[at..].iter().find(|e| e.stage == "qemu_started").unwrap_or(&since[at]);
            ("succeeded", Some(done.at_ms))
        }
        Some(_) => ("in-progress", None),
        None if since.iter().any(|e| e.stage == "rebuild_stopping" || e.stage == "stopped") => ("in-progress", None),
        None => ("pending", None),
    }
}

fn task_el(name: &'static str, t: &ReplaceRootTaskRow, state: &str, completed: Option<i64>) -> El {
    El::new(name)
        .field("replaceRootVolumeTaskId", &t.id)
        .field("instanceId", &t.instance_id)
        .field("taskState", state)
        .field("startTime", xml::time(t.started_at_ms))
        .opt("completeTime", completed.map(xml::time))
        .child(El::new("tagSet"))
        .opt("imageId", t.image_id.as_deref())
        .opt("snapshotId", t.snapshot_id.as_deref())
        .field("deleteReplacedRootVolume", true)
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let instance = super::instances::parse_ids(&[p.required("InstanceId")?.to_string()])?.remove(0);
    let image = p.str("ImageId").filter(|s| !s.is_empty());
    let snapshot = p.str("SnapshotId").filter(|s| !s.is_empty());
    if image.is_some() && snapshot.is_some() {
        return Err(Ec2Error::bad(
            "InvalidParameterCombination",
            "ImageId and SnapshotId cannot both be given: a new root disk comes from one of them",
        ));
    }
    // The replaced disk is always deleted; asking to keep it is accepted
    // and answered with what happens (`deleteReplacedRootVolume` true).
    p.bool("DeleteReplacedRootVolume")?;
    let started_at_ms = now_ms();
    let found = crate::app::day_two::replace_root_running(ctx, caller, instance.as_str(), image, snapshot)
        .await
        .in_domain(Domain::Instance)?;
    let task = ReplaceRootTaskRow {
        id: ReplaceRootVolumeTaskId::generate().to_string(),
        project_id: project,
        instance_id: instance.to_string(),
        image_id: image.map(|_| found.id.clone()),
        snapshot_id: snapshot.map(|_| found.id.clone()),
        started_at_ms,
    };
    ctx.store.insert_replace_root_task(&task).await?;
    Ok(vec![task_el("replaceRootVolumeTask", &task, "pending", None)])
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let ids = p.list("ReplaceRootVolumeTaskId");
    let mut instance_ids = Vec::new();
    for f in p.filters()? {
        match f.name.as_str() {
            "instance-id" => instance_ids.extend(f.values),
            other => {
                return Err(Ec2Error::invalid(format!(
                    "The filter '{}' is invalid: DescribeReplaceRootVolumeTasks filters by instance-id",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    let mut items = Vec::new();
    for t in ctx.store.replace_root_tasks(&project).await? {
        if (!ids.is_empty() && !ids.contains(&t.id))
            || (!instance_ids.is_empty() && !instance_ids.contains(&t.instance_id))
        {
            continue;
        }
        // A task whose instance the caller can no longer read is left out.
        let Ok(row) = crate::app::instances::load(ctx, caller, &t.instance_id, Access::Read).await else { continue };
        let events = ctx.store.events(&row.id).await?;
        let (state, completed) = state_of(t.started_at_ms, row.state, &events);
        items.push(task_el("item", &t, state, completed));
    }
    Ok(vec![El::list("replaceRootVolumeTaskSet", items)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: i64, stage: &str) -> InstanceEvent {
        InstanceEvent { at_ms, stage: stage.into(), detail: String::new() }
    }

    #[test]
    fn a_tasks_state_follows_the_instances_events_since_it_began() {
        let old = ev(5, "root_disk_removed");
        assert_eq!(state_of(10, InstanceState::Running, &[old.clone(), ev(10, "rebuild")]), ("pending", None));
        let stopping = [old.clone(), ev(10, "rebuild"), ev(11, "rebuild_stopping")];
        assert_eq!(state_of(10, InstanceState::Stopping, &stopping), ("in-progress", None));
        let done = [ev(10, "rebuild"), ev(11, "rebuild_stopping"), ev(12, "root_disk_removed"), ev(13, "qemu_started")];
        assert_eq!(state_of(10, InstanceState::Pending, &done), ("in-progress", None));
        assert_eq!(state_of(10, InstanceState::Running, &done), ("succeeded", Some(13)));
        assert_eq!(state_of(10, InstanceState::Error, &done), ("failed", Some(13)));
    }
}
