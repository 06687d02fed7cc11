-- Two reads of the review web UI and its export scanned tables that only grow: the audit page read the whole audit
-- trail to show its latest entries, and the export of decisions since a time read every decided item.
CREATE INDEX safety_audit_recent ON safety_audit (at, id);
CREATE INDEX safety_review_decided ON safety_review_items (decided_at) WHERE status = 'decided';
