-- A launch without networks asks whether any host that is up runs private
-- networks (`Store::bridging_host_up`). Without an index that was a scan
-- of every host, per launch: this one holds the bridging hosts alone, so
-- the question costs the same at 10,000 hosts as at 10.
CREATE INDEX hosts_bridging ON hosts (last_heartbeat_ms) WHERE underlay IS NOT NULL;
