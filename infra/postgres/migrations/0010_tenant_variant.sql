-- A tenant's default model variant (issue 3: a request, tenant or model setting picks the variant). NULL: the model's
-- default variant from the registry (model_variants.is_default). A request that names a variant overrides it.
ALTER TABLE tenants
    ADD COLUMN default_variant text CHECK (default_variant ~ '^[a-z0-9][a-z0-9_-]{0,31}$');
