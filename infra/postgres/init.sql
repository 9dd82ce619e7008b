-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
-- One database per server; both belong to POSTGRES_USER, the user this script runs as.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;

-- The Prefect server's migrations need pg_trgm (its text-search indexes).
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
