//! The EC2 API's VPCs, subnets and egress rules driven by stock boto3
//! (from the shared virtualenv) against a real `nubo server` with no host
//! and no VM (none of these calls needs one): a VPC made with a Name tag,
//! its one subnet (a different range refused), both described by id and
//! filter, the default VPC made on first ask, an egress rule authorized,
//! seen and revoked, the VPC deleted and then unknown. The endpoint is on
//! 127.0.0.1; nothing outside is read.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;

#[test]
fn boto3_creates_and_describes_vpcs_subnets_and_egress_rules() {
    let cloud = Cloud::server_only();
    let aws = Aws::new(&cloud);
    let script = r#"
vpc = ec2.create_vpc(CidrBlock="10.60.0.0/24",
                     TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "apps"}]}])["Vpc"]
vpc_id = vpc["VpcId"]
assert vpc_id.startswith("vpc-") and vpc["CidrBlock"] == "10.60.0.0/24" and vpc["IsDefault"] is False, vpc
assert code_of(ec2.create_subnet, VpcId=vpc_id, CidrBlock="10.60.0.0/25") == "InvalidParameterValue"
subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.60.0.0/24")["Subnet"]
assert subnet["VpcId"] == vpc_id and subnet["AvailableIpAddressCount"] == 253, subnet
# The same signed request twice in one second is a replay (refused as
# such): a second apart, it is a second request.
time.sleep(1.1)
assert code_of(ec2.create_subnet, VpcId=vpc_id, CidrBlock="10.60.0.0/24") == "InvalidSubnet.Conflict"

got = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
assert [v["VpcId"] for v in got] == [vpc_id] and got[0]["Tags"] == [{"Key": "Name", "Value": "apps"}], got
got = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["apps"]}])["Vpcs"]
assert [v["VpcId"] for v in got] == [vpc_id], got
subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
assert [s["SubnetId"] for s in subnets] == [subnet["SubnetId"]], subnets

default = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
assert len(default) == 1 and default[0]["IsDefault"] is True and default[0]["CidrBlock"] == "172.31.0.0/20", default
again = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
assert again[0]["VpcId"] == default[0]["VpcId"], again

sg = ec2.create_security_group(GroupName="app", Description="app tier", VpcId=vpc_id)["GroupId"]
perm = [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
ec2.authorize_security_group_egress(GroupId=sg, IpPermissions=perm)
group = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]
egress = [(p["IpProtocol"], p.get("FromPort"), [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissionsEgress"]]
assert ("tcp", 443, ["10.0.0.0/8"]) in egress, group
assert group["IpPermissions"] == [], group
ec2.revoke_security_group_egress(GroupId=sg, IpPermissions=perm)
time.sleep(1.1)
assert code_of(ec2.revoke_security_group_egress, GroupId=sg, IpPermissions=perm) == "InvalidPermission.NotFound"

ec2.delete_subnet(SubnetId=subnet["SubnetId"])
ec2.delete_vpc(VpcId=vpc_id)
assert code_of(ec2.describe_vpcs, VpcIds=[vpc_id]) == "InvalidVpcID.NotFound"
assert code_of(ec2.describe_vpcs, VpcIds=["vpc-nothex"]) == "InvalidVpcID.Malformed"
print("boto3-vpc-ok")
"#;
    let out = aws.boto3(script).output().expect("python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("boto3-vpc-ok"),
        "boto3 script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
