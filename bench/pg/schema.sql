-- The PostgreSQL baseline: what a university would otherwise run, a purchase as one
-- PostgreSQL transaction. Everything lives in the schema cardgate_bench, so that it
-- never touches another test's tables; this file drops and recreates that schema.
--
-- Money is integer fen, as on cardgate's wire and in its records.

SET client_min_messages = warning;
DROP SCHEMA IF EXISTS cardgate_bench CASCADE;
CREATE SCHEMA cardgate_bench;

CREATE TABLE cardgate_bench.accounts (
    id               bigint PRIMARY KEY,
    kind             text   NOT NULL CHECK (kind IN ('student', 'staff', 'temporary')),
    status           text   NOT NULL CHECK (status IN ('active', 'frozen', 'closed')),
    balance_fen      bigint NOT NULL CHECK (balance_fen >= 0),
    single_limit_fen bigint NOT NULL,
    daily_limit_fen  bigint NOT NULL,
    -- The business day spent_today_fen belongs to.
    day              date   NOT NULL,
    spent_today_fen  bigint NOT NULL
);

CREATE TABLE cardgate_bench.cards (
    card_no    bigint PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES cardgate_bench.accounts (id),
    status     text   NOT NULL CHECK (status IN ('active', 'lost', 'frozen', 'cancelled', 'replaced', 'bad'))
);

-- Every decision, approved or declined, like cardgate's journal.
CREATE TABLE cardgate_bench.transactions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    terminal_id       bigint      NOT NULL,
    card_no           bigint      NOT NULL,
    account_id        bigint,
    amount_fen        bigint      NOT NULL,
    approved          boolean     NOT NULL,
    decline_reason    text,
    balance_after_fen bigint,
    decided_at        timestamptz NOT NULL DEFAULT now()
);

-- The same purchase in one round trip, for the "PostgreSQL at its best" variant
-- (purchase_fn.pgbench): check the card, lock the account, check balance and limits,
-- debit, record. Returns whether it was approved.
CREATE FUNCTION cardgate_bench.purchase(p_terminal bigint, p_card bigint, p_amount bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c   cardgate_bench.cards%ROWTYPE;
    a   cardgate_bench.accounts%ROWTYPE;
    spent  bigint;
    reason text;
BEGIN
    SELECT * INTO c FROM cardgate_bench.cards WHERE card_no = p_card;
    IF NOT FOUND THEN
        reason := 'unknown_card';
    ELSIF c.status <> 'active' THEN
        reason := 'card_' || c.status;
    ELSE
        SELECT * INTO a FROM cardgate_bench.accounts WHERE id = c.account_id FOR UPDATE;
        spent := CASE WHEN a.day = current_date THEN a.spent_today_fen ELSE 0 END;
        IF a.status <> 'active' THEN
            reason := 'account_blocked';
        ELSIF p_amount > a.single_limit_fen THEN
            reason := 'over_single_limit';
        ELSIF spent + p_amount > a.daily_limit_fen THEN
            reason := 'over_daily_limit';
        ELSIF a.balance_fen < p_amount THEN
            reason := 'insufficient_funds';
        END IF;
    END IF;
    IF reason IS NULL THEN
        UPDATE cardgate_bench.accounts
           SET balance_fen = balance_fen - p_amount, spent_today_fen = spent + p_amount, day = current_date
         WHERE id = a.id;
        INSERT INTO cardgate_bench.transactions (terminal_id, card_no, account_id, amount_fen, approved, balance_after_fen)
        VALUES (p_terminal, p_card, a.id, p_amount, true, a.balance_fen - p_amount);
        RETURN true;
    END IF;
    INSERT INTO cardgate_bench.transactions (terminal_id, card_no, account_id, amount_fen, approved, decline_reason)
    VALUES (p_terminal, p_card, c.account_id, p_amount, false, reason);
    RETURN false;
END $$;
