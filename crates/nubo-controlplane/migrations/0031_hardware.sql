-- Virtual hardware beyond CPUs, memory and disks: the firmware (bios or
-- uefi), Secure Boot, a TPM 2.0 and a display, as the JSON of
-- nubo_api::hardware::Hardware. On an image: what its instances need; on
-- an instance: what it boots with (its image's and its own request
-- merged at launch). NULL: the defaults (BIOS, none of the others), which
-- is what every image and instance had before.
ALTER TABLE images ADD COLUMN hardware TEXT;
ALTER TABLE instances ADD COLUMN hardware TEXT;
