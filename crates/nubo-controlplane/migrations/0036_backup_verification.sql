-- A backup's verification boots it as a throwaway instance: the backup it
-- verifies is recorded on that instance, which is then not counted against
-- its project's quota (neither when launched nor when terminated).
ALTER TABLE instances ADD COLUMN verification_of TEXT;
