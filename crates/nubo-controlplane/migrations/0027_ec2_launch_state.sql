-- The VPC (network) an EC2 client made a security group in, when it
-- named one (CreateSecurityGroup's VpcId): reported as the group's vpcId
-- and matched by the `vpc-id` filter, which Ansible and Terraform look
-- groups up by. Groups still apply to instances on any of the project's
-- networks; a group made without one (REST, the CLI) has none.
ALTER TABLE security_groups ADD COLUMN network_id TEXT;

-- EC2's DeleteOnTermination of a volume's attachment: a volume that
-- RunInstances made from a block device mapping goes with its instance
-- (unless the mapping said otherwise); one attached later stays, as
-- EC2's AttachVolume leaves it. Detaching clears it.
ALTER TABLE volumes ADD COLUMN delete_on_termination BIGINT NOT NULL DEFAULT 0;
