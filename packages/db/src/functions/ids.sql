-- credits.uuid_v7(): a time-ordered UUID (RFC 9562 version 7: 48 bits of Unix time in milliseconds, then
-- version, variant and random bits), the id of new ledger rows (Postgres 15 has no uuidv7()). Rows inserted
-- later get larger ids, so the primary key index of an append-only ledger grows at its right edge instead of
-- touching a random leaf page per row: the pages a write touches stay few and cached, and a checkpoint is
-- followed by far fewer full-page images. Ids stay unguessable (74 random bits) and are still plain uuids;
-- nothing may rely on their order (created_at orders the ledger). A SQL function the planner inlines.
create or replace function credits.uuid_v7() returns uuid language sql volatile parallel safe as $$
  select encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              placing substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::int8) from 3)
              from 1 for 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;
