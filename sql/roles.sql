-- rapport's database role: one that can only read.
--
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 [-v reader=rapport_reader] [-v password=…] -f sql/roles.sql
--
-- Run it as the owner of the tables (or a superuser), after sql/schema.sql.
-- Scripts' SQL runs on rapport's DATABASE_URL connections, so that URL must
-- log in as this role: rapport refuses to start on a role that may write to,
-- or owns, a table it can read (see docs/operations.md, "The database role").
-- Idempotent. Without a password the role can only log in where pg_hba.conf
-- trusts it (the private demo/test cluster of tools/pg.sh).

\if :{?reader}
\else
\set reader rapport_reader
\endif
\if :{?password}
\else
\set password ''
\endif

SET client_min_messages = warning;

SELECT format('CREATE ROLE %I LOGIN', :'reader')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec
-- Whatever it was before: no superuser, no role/database creation, no
-- inheriting of other roles' rights.
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS',
              :'reader') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'reader', :'password') WHERE :'password' <> '' \gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'reader') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'reader') \gexec
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', :'reader') \gexec
-- Tables the owner creates later are readable too.
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public GRANT SELECT ON TABLES TO %I',
              current_user, :'reader') \gexec
