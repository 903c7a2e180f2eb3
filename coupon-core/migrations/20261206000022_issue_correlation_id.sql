-- The x-request-id of the HTTP request whose admission became this row (issue 17 item 2): one id
-- from the HTTP answer through the issue message and the consumer's log line to the row. NULL
-- for rows written before this column, and for issues re-published by a rebuild or
-- reconciliation. coupon-api keeps at most 128 bytes of visible ASCII (coupon_api::request_id).
ALTER TABLE coupon_issues ADD COLUMN correlation_id VARCHAR(128) NULL;
