-- Money, prices and quantities are BIGINT counts of 1/10000 (`*_e4`), as in the SQLite schema,
-- so that both databases run the same queries. Times are Unix milliseconds (`*_ms`), UTC.

CREATE TABLE stocks (
    id               BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    symbol           VARCHAR(32)  NOT NULL,
    exchange         VARCHAR(16)  NOT NULL DEFAULT 'US',
    name             VARCHAR(255) NOT NULL DEFAULT '',
    currency         VARCHAR(3)   NOT NULL DEFAULT 'USD',
    borsdata_id      BIGINT,
    active           BIGINT       NOT NULL DEFAULT 1,
    last_price_e4    BIGINT,
    last_price_at_ms BIGINT,
    checked_at_ms    BIGINT,
    UNIQUE KEY stocks_symbol (symbol, exchange)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE price_history (
    stock_id BIGINT      NOT NULL,
    at_ms    BIGINT      NOT NULL,
    price_e4 BIGINT      NOT NULL,
    volume   BIGINT,
    source   VARCHAR(32) NOT NULL,
    PRIMARY KEY (stock_id, at_ms),
    KEY price_history_by_time (at_ms),
    CONSTRAINT price_history_stock FOREIGN KEY (stock_id) REFERENCES stocks (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE portfolios (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name          VARCHAR(191) NOT NULL,
    currency      VARCHAR(3)   NOT NULL DEFAULT 'USD',
    created_at_ms BIGINT       NOT NULL,
    UNIQUE KEY portfolios_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE holdings (
    portfolio_id BIGINT NOT NULL,
    stock_id     BIGINT NOT NULL,
    quantity_e4  BIGINT NOT NULL,
    PRIMARY KEY (portfolio_id, stock_id),
    CONSTRAINT holdings_portfolio FOREIGN KEY (portfolio_id) REFERENCES portfolios (id) ON DELETE CASCADE,
    CONSTRAINT holdings_stock FOREIGN KEY (stock_id) REFERENCES stocks (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE portfolio_values (
    portfolio_id      BIGINT NOT NULL,
    at_ms             BIGINT NOT NULL,
    value_e4          BIGINT NOT NULL,
    priced_holdings   BIGINT NOT NULL,
    unpriced_holdings BIGINT NOT NULL,
    PRIMARY KEY (portfolio_id, at_ms),
    KEY portfolio_values_by_time (at_ms),
    CONSTRAINT portfolio_values_portfolio FOREIGN KEY (portfolio_id) REFERENCES portfolios (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE reports (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    portfolio_id  BIGINT       NOT NULL,
    report_date   VARCHAR(10)  NOT NULL,
    created_at_ms BIGINT       NOT NULL,
    subject       VARCHAR(255) NOT NULL,
    html          MEDIUMTEXT   NOT NULL,
    summary       TEXT         NOT NULL,
    chart_png     MEDIUMBLOB,
    -- Set once e-mailed and sent to Telegram: a retried report run does not send it twice.
    delivered_at_ms BIGINT,
    UNIQUE KEY reports_day (portfolio_id, report_date),
    KEY reports_by_time (created_at_ms),
    CONSTRAINT reports_portfolio FOREIGN KEY (portfolio_id) REFERENCES portfolios (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per alert condition of the health monitor, so that an incident alerts once.
CREATE TABLE alert_state (
    alert_key VARCHAR(191) NOT NULL PRIMARY KEY,
    since_ms  BIGINT       NOT NULL,
    detail    TEXT         NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Readings the health monitor compares from one run to the next (the dead-letter count).
CREATE TABLE monitor_state (
    name  VARCHAR(191) NOT NULL PRIMARY KEY,
    value BIGINT       NOT NULL,
    at_ms BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
