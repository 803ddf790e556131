-- Runs once, when the postgres container starts on an empty data volume
-- (docker-entrypoint-initdb.d): one database per service; each service applies
-- its own migrations at start-up (under sqlx's advisory lock).
CREATE DATABASE sales;
CREATE DATABASE product;
CREATE DATABASE delivery;
