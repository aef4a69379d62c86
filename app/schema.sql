-- Schema of the app's database; applied by the deploy as root (the app user has no DDL).
CREATE TABLE IF NOT EXISTS notes (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  text VARCHAR(1000) NOT NULL,
  server VARCHAR(64) NOT NULL,
  created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Writes made by `fab db.switchover`/`db.failover` through an app host's writer endpoint:
-- "first write accepted" in a failover's timeline is a row here.
CREATE TABLE IF NOT EXISTS failover_probe (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  written_by VARCHAR(64) NOT NULL,
  created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;
