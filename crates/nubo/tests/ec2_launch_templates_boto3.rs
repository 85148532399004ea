//! EC2 launch templates driven by stock boto3 (from the shared
//! virtualenv) against a real `nubo server` with no host and no VM (none
//! of these calls launches): a template made with instance data and its
//! own tags, a version from it, the default moved, both described (with
//! `$Latest`, a filter and a paginator), the default version's deletion
//! refused, the template deleted and then unknown. Checks that botocore
//! reads every answer. The endpoint is on 127.0.0.1; nothing outside is read.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;

#[test]
fn boto3_manages_launch_templates_and_their_versions() {
    let cloud = Cloud::server_only();
    let aws = Aws::new(&cloud);
    let script = r##"
import base64

ami = [i for i in ec2.describe_images()["Images"] if i["Name"] == "tiny"][0]["ImageId"]
data = {"ImageId": ami, "InstanceType": "t3.micro",
        "UserData": base64.b64encode(b"#!/bin/sh\necho hi\n").decode(),
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]}],
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 4}}],
        "MetadataOptions": {"HttpTokens": "required"}}
lt = ec2.create_launch_template(LaunchTemplateName="web", VersionDescription="first", LaunchTemplateData=data,
    TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "env", "Value": "prod"}]}])["LaunchTemplate"]
lt_id = lt["LaunchTemplateId"]
assert lt_id.startswith("lt-") and lt["DefaultVersionNumber"] == 1 and lt["LatestVersionNumber"] == 1, lt
assert lt["Tags"] == [{"Key": "env", "Value": "prod"}], lt
time.sleep(1.1)
assert code_of(ec2.create_launch_template, LaunchTemplateName="web", LaunchTemplateData=data) == \
    "InvalidLaunchTemplateName.AlreadyExistsException"

v = ec2.create_launch_template_version(LaunchTemplateId=lt_id, SourceVersion="1",
    LaunchTemplateData={"InstanceType": "t3.small"})["LaunchTemplateVersion"]
assert v["VersionNumber"] == 2 and v["DefaultVersion"] is False, v
d = v["LaunchTemplateData"]
assert d["ImageId"] == ami and d["InstanceType"] == "t3.small", d
assert d["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 4 and d["MetadataOptions"]["HttpTokens"] == "required", d
assert d["TagSpecifications"][0]["Tags"] == [{"Key": "Name", "Value": "web"}], d
assert base64.b64decode(d["UserData"]) == b"#!/bin/sh\necho hi\n", d

m = ec2.modify_launch_template(LaunchTemplateName="web", DefaultVersion="2")["LaunchTemplate"]
assert m["DefaultVersionNumber"] == 2, m

got = ec2.describe_launch_templates(LaunchTemplateNames=["web"])["LaunchTemplates"]
assert [t["LaunchTemplateId"] for t in got] == [lt_id], got
got = ec2.describe_launch_templates(Filters=[{"Name": "tag:env", "Values": ["prod"]}])["LaunchTemplates"]
assert len(got) == 1, got
assert code_of(ec2.describe_launch_templates, LaunchTemplateNames=["nope"]) == \
    "InvalidLaunchTemplateName.NotFoundException"

latest = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Latest"])["LaunchTemplateVersions"]
assert [x["VersionNumber"] for x in latest] == [2] and latest[0]["DefaultVersion"] is True, latest
pages = ec2.get_paginator("describe_launch_template_versions").paginate(
    LaunchTemplateName="web", PaginationConfig={"PageSize": 1})
assert [x["VersionNumber"] for p in pages for x in p["LaunchTemplateVersions"]] == [1, 2]

r = ec2.delete_launch_template_versions(LaunchTemplateId=lt_id, Versions=["1", "2"])
assert [x["VersionNumber"] for x in r["SuccessfullyDeletedLaunchTemplateVersions"]] == [1], r
failed = r["UnsuccessfullyDeletedLaunchTemplateVersions"]
assert [(x["VersionNumber"], x["ResponseError"]["Code"]) for x in failed] == [(2, "unexpectedError")], r

gone = ec2.delete_launch_template(LaunchTemplateId=lt_id)["LaunchTemplate"]
assert gone["LaunchTemplateName"] == "web", gone
time.sleep(1.1)
assert code_of(ec2.delete_launch_template, LaunchTemplateId=lt_id) == "InvalidLaunchTemplateId.NotFound"
print("boto3-lt-ok")
"##;
    let out = aws.boto3(script).output().expect("python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("boto3-lt-ok"),
        "boto3 script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
