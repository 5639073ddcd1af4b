-- Money, prices and quantities are BIGINT counts of 1/10000 (`*_e4`): SQLite has no exact
-- decimal type. Times are Unix milliseconds (`*_ms`), UTC.

CREATE TABLE stocks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol           TEXT    NOT NULL,
    exchange         TEXT    NOT NULL DEFAULT 'US',
    name             TEXT    NOT NULL DEFAULT '',
    currency         TEXT    NOT NULL DEFAULT 'USD',
    borsdata_id      INTEGER,
    active           INTEGER NOT NULL DEFAULT 1,
    last_price_e4    INTEGER,
    last_price_at_ms INTEGER,
    checked_at_ms    INTEGER,
    UNIQUE (symbol, exchange)
);

CREATE TABLE price_history (
    stock_id INTEGER NOT NULL REFERENCES stocks (id) ON DELETE CASCADE,
    at_ms    INTEGER NOT NULL,
    price_e4 INTEGER NOT NULL,
    volume   INTEGER,
    source   TEXT    NOT NULL,
    PRIMARY KEY (stock_id, at_ms)
);
CREATE INDEX price_history_by_time ON price_history (at_ms);

CREATE TABLE portfolios (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    currency      TEXT    NOT NULL DEFAULT 'USD',
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE holdings (
    portfolio_id INTEGER NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    stock_id     INTEGER NOT NULL REFERENCES stocks (id),
    quantity_e4  INTEGER NOT NULL,
    PRIMARY KEY (portfolio_id, stock_id)
);

CREATE TABLE portfolio_values (
    portfolio_id      INTEGER NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    at_ms             INTEGER NOT NULL,
    value_e4          INTEGER NOT NULL,
    priced_holdings   INTEGER NOT NULL,
    unpriced_holdings INTEGER NOT NULL,
    PRIMARY KEY (portfolio_id, at_ms)
);
CREATE INDEX portfolio_values_by_time ON portfolio_values (at_ms);

CREATE TABLE reports (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    portfolio_id  INTEGER NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    report_date   TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    subject       TEXT    NOT NULL,
    html          TEXT    NOT NULL,
    summary       TEXT    NOT NULL,
    chart_png     BLOB,
    -- Set once e-mailed and sent to Telegram: a retried report run does not send it twice.
    delivered_at_ms INTEGER,
    UNIQUE (portfolio_id, report_date)
);
CREATE INDEX reports_by_time ON reports (created_at_ms);

-- One row per alert condition of the health monitor, so that an incident alerts once.
CREATE TABLE alert_state (
    alert_key TEXT    PRIMARY KEY,
    since_ms  INTEGER NOT NULL,
    detail    TEXT    NOT NULL
);

-- Readings the health monitor compares from one run to the next (the dead-letter count).
CREATE TABLE monitor_state (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
