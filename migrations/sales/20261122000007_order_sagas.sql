-- Finding an order's saga (the retry worker resumes it, staff read it).
CREATE INDEX saga_instances_by_order ON saga_instances ((context->>'order_id')) WHERE saga_type = 'order';
