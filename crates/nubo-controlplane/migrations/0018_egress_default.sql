-- Egress rules are enforced on hosts from now on, and a group without any
-- lets nothing out (as on EC2). Groups made before stored no egress rule
-- but let everything out: give each of them EC2's "everything out" rule
-- so they keep working. The rule id reuses the group's 17 hex digits
-- (one such rule per group, so it is unique).
INSERT INTO security_group_rules (id, group_id, direction, protocol, from_port, to_port, cidr,
    source_group_id, description, created_at_ms)
SELECT 'sgr-' || substr(g.id, 4), g.id, 'egress', '-1', -1, -1, '0.0.0.0/0', NULL, '', g.created_at_ms
FROM security_groups g
WHERE NOT EXISTS (SELECT 1 FROM security_group_rules r WHERE r.group_id = g.id AND r.direction = 'egress');
