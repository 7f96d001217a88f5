-- The demo campus, as `cardgate serve --demo` creates it: accounts 1..:accounts (every
-- tenth is staff), one active card each numbered 1000000000 + account id, 1,000.00 yuan
-- each, and cardgate's default limits (student 200/600 yuan single/daily, staff
-- 500/2,000). Run with: psql -v accounts=20000 -f seed.sql
\set ON_ERROR_STOP on
TRUNCATE cardgate_bench.transactions, cardgate_bench.cards, cardgate_bench.accounts;
INSERT INTO cardgate_bench.accounts
SELECT id,
       CASE WHEN id % 10 = 0 THEN 'staff' ELSE 'student' END,
       'active',
       100000,
       CASE WHEN id % 10 = 0 THEN 50000 ELSE 20000 END,
       CASE WHEN id % 10 = 0 THEN 200000 ELSE 60000 END,
       current_date,
       0
  FROM generate_series(1, :accounts) AS id;
INSERT INTO cardgate_bench.cards
SELECT 1000000000 + id, id, 'active' FROM generate_series(1, :accounts) AS id;
VACUUM ANALYZE cardgate_bench.accounts;
VACUUM ANALYZE cardgate_bench.cards;
VACUUM ANALYZE cardgate_bench.transactions;
