-- Instance attributes (EC2's DescribeInstanceAttribute and
-- ModifyInstanceAttribute, and the REST API's protection route):
-- termination and stop protection, refused by every way of terminating
-- or stopping the instance (a guest's own poweroff excepted, as on EC2);
-- what a guest-initiated poweroff does (`stop` or `terminate`); and
-- EC2's source/destination check, stored and reported (the hosts'
-- anti-spoofing rules stay on whatever it says).

ALTER TABLE instances ADD COLUMN termination_protection BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN stop_protection BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN shutdown_behavior TEXT NOT NULL DEFAULT 'stop';
ALTER TABLE instances ADD COLUMN source_dest_check BIGINT NOT NULL DEFAULT 1;
