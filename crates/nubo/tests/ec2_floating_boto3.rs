//! An Elastic IP through the EC2 API, for real, driven by one stock boto3
//! script: two hosts (network namespaces with `nubo agent --external
//! lan=lan0`) plugged into an "office" namespace that is the LAN (a
//! bridge with a client at 192.168.50.10 and the LAN's router address
//! .1), and the external network `lan` an operator made. The script makes
//! a VPC and its subnet, runs a `tiny` instance there whose user-data
//! serves a page on port 80, allocates an address and associates it, sees
//! it in DescribeAddresses and DescribeInstances, lets ICMP and then
//! port 80 into the instance's security group (the office pings the
//! address while port 80 is still closed), and fetches the page from the office client
//! at the public address (python's urllib inside the office namespace);
//! then disassociates and releases it, after which the office gets no
//! answer. Nothing leaves the namespaces but the agents' and boto3's
//! control-plane traffic on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;

const SCRIPT: &str = r##"
import os, subprocess, time
office = os.environ["OFFICE_NS"]

FETCH = '''
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())
except Exception as e:
    print("failed:", type(e).__name__)
'''

def office_fetch(url):
    out = subprocess.run(["ip", "netns", "exec", office, "python3", "-c", FETCH, url], capture_output=True, text=True)
    return out.stdout.strip()


def step(text):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), text), flush=True)

vpc = ec2.create_vpc(CidrBlock="10.70.0.0/24")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.70.0.0/24")["Subnet"]["SubnetId"]
ami = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny"]}])["Images"][0]["ImageId"]
user_data = "#!/bin/sh\nmkdir -p /www && echo page-at-the-elastic-ip > /www/index.html && httpd -p 80 -h /www && echo httpd-started\n"
instance = ec2.run_instances(ImageId=ami, InstanceType="t2.nano", MinCount=1, MaxCount=1,
                             SubnetId=subnet, UserData=user_data)["Instances"][0]
iid = instance["InstanceId"]
step("launched %s in %s" % (iid, subnet))
ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 3, "MaxAttempts": 100})
wait_for("the user-data's httpd", 240,
         lambda: "httpd-started" in (ec2.get_console_output(InstanceId=iid).get("Output") or ""))
step("running, httpd started")

alloc = ec2.allocate_address(Domain="vpc")
assert alloc["Domain"] == "vpc" and alloc["AllocationId"].startswith("eipalloc-"), alloc
public, alloc_id = alloc["PublicIp"], alloc["AllocationId"]
assert public.startswith("192.168.50."), alloc
association = ec2.associate_address(AllocationId=alloc_id, InstanceId=iid)["AssociationId"]
assert association.startswith("eipassoc-"), association
step("allocated %s (%s), associated %s" % (public, alloc_id, association))

address = ec2.describe_addresses(AllocationIds=[alloc_id])["Addresses"][0]
assert address["PublicIp"] == public and address["InstanceId"] == iid and address["AssociationId"] == association, address
got = ec2.describe_addresses(Filters=[{"Name": "instance-id", "Values": [iid]}])["Addresses"]
assert [a["AllocationId"] for a in got] == [alloc_id], got
described = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
assert described["PublicIpAddress"] == public, described
assert described["NetworkInterfaces"][0]["Association"]["PublicIp"] == public, described
assert address["PrivateIpAddress"] == described["PrivateIpAddress"], (address, described)
time.sleep(1.1)
assert code_of(ec2.release_address, AllocationId=alloc_id) == "InvalidIPAddress.InUse"

url = "http://%s/" % public
# The instance's group (the project's default): ICMP first, so that the
# office reaching the address shows the translation works while port 80
# is still closed.
group = described["SecurityGroups"][0]["GroupId"]
ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
    {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
wait_for("ping from the office to the Elastic IP", 60,
         lambda: subprocess.run(["ip", "netns", "exec", office, "ping", "-c", "1", "-W", "1", public],
                                capture_output=True).returncode == 0)
assert office_fetch(url).startswith("failed"), "port 80 was open before a rule"
ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
step("port 80 open in %s" % group)
wait_for("the page at the Elastic IP", 60, lambda: office_fetch(url) == "page-at-the-elastic-ip")
step("the office fetched the page at %s" % url)

ec2.disassociate_address(AssociationId=association)
wait_for("no answer at the disassociated address", 60, lambda: office_fetch(url).startswith("failed"))
assert "InstanceId" not in ec2.describe_addresses(AllocationIds=[alloc_id])["Addresses"][0]
ec2.release_address(AllocationId=alloc_id)
assert code_of(ec2.describe_addresses, AllocationIds=[alloc_id]) == "InvalidAllocationID.NotFound"
assert "PublicIpAddress" not in ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
ec2.terminate_instances(InstanceIds=[iid])
print("boto3-elastic-ip-ok")
"##;

#[test]
fn boto3_serves_a_page_at_an_elastic_ip_to_the_office() {
    let fabric = Fabric::new("e", 2);
    let office = fabric.office(2);
    let mut cloud = Cloud::server_only();
    cloud.start_hosts_on_the_office_lan(&fabric, 2);
    let aws = Aws::new(&cloud);
    let out = aws.boto3(SCRIPT).env("OFFICE_NS", &office).output().expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("boto3-elastic-ip-ok"),
        "boto3 script failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
