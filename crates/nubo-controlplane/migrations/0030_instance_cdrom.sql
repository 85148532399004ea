-- An instance's CD-ROM drive (installing an OS from an ISO image):
-- cdrom_drive 1 gives its VM an ide-cd drive, which an ISO image of the
-- project (or a public one) is in (cdrom_image_id) or which is empty
-- (ejected). boot_order is `cdrom,disk` or `disk,cdrom`; none boots the
-- root disk (or the kernel) as every other instance does.
ALTER TABLE instances ADD COLUMN cdrom_drive BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN cdrom_image_id TEXT;
ALTER TABLE instances ADD COLUMN boot_order TEXT;
