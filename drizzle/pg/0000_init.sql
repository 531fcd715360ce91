CREATE TABLE "agent_service_client_ids" (
	"agent_client_id" text NOT NULL,
	"audience" text NOT NULL,
	"client_id" text NOT NULL,
	CONSTRAINT "agent_service_client_ids_agent_client_id_audience_pk" PRIMARY KEY("agent_client_id","audience")
);
--> statement-breakpoint
CREATE TABLE "agents" (
	"client_id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"logo_uri" text,
	"redirect_uris" jsonb NOT NULL,
	"token_endpoint_auth_method" text NOT NULL,
	"secret_hash" text,
	"jwks" jsonb,
	"jwks_uri" text,
	"allowed_audiences" jsonb,
	"created_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	"removed_at" bigint
);
--> statement-breakpoint
CREATE TABLE "assertions" (
	"jti" text PRIMARY KEY NOT NULL,
	"delegation_id" text NOT NULL,
	"user_id" text NOT NULL,
	"agent_client_id" text NOT NULL,
	"audience" text NOT NULL,
	"resources" jsonb NOT NULL,
	"scope" text NOT NULL,
	"kid" text NOT NULL,
	"issued_at" bigint NOT NULL,
	"expires_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "client_assertion_jtis" (
	"client_id" text NOT NULL,
	"jti" text NOT NULL,
	"expires_at" bigint NOT NULL,
	CONSTRAINT "client_assertion_jtis_client_id_jti_pk" PRIMARY KEY("client_id","jti")
);
--> statement-breakpoint
CREATE TABLE "connections" (
	"id" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"agent_client_id" text NOT NULL,
	"grant_id" text,
	"scope" text NOT NULL,
	"created_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	"last_connected_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	"disconnected_at" bigint
);
--> statement-breakpoint
CREATE TABLE "consent_requests" (
	"id" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"agent_client_id" text NOT NULL,
	"audience" text NOT NULL,
	"resources" jsonb NOT NULL,
	"scope" text NOT NULL,
	"created_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	"expires_at" bigint NOT NULL,
	"outcome" text,
	"delegation_id" text
);
--> statement-breakpoint
CREATE TABLE "delegations" (
	"id" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"agent_client_id" text NOT NULL,
	"audience" text NOT NULL,
	"resources" jsonb NOT NULL,
	"scope" text NOT NULL,
	"mode" text NOT NULL,
	"expires_at" bigint,
	"service_name" text,
	"service_logo_uri" text,
	"service_agent_auth" jsonb,
	"uses" bigint DEFAULT 0 NOT NULL,
	"last_used_at" bigint,
	"consumed_at" bigint,
	"revoked_at" bigint,
	"created_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "login_attempts" (
	"state_hash" text PRIMARY KEY NOT NULL,
	"nonce" text NOT NULL,
	"code_verifier" text NOT NULL,
	"return_to" text NOT NULL,
	"expires_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "oidc_models" (
	"model" text NOT NULL,
	"id" text NOT NULL,
	"payload" jsonb NOT NULL,
	"grant_id" text,
	"user_code" text,
	"uid" text,
	"expires_at" bigint,
	"consumed_at" bigint,
	CONSTRAINT "oidc_models_model_id_pk" PRIMARY KEY("model","id")
);
--> statement-breakpoint
CREATE TABLE "revocation_events" (
	"id" text PRIMARY KEY NOT NULL,
	"delegation_id" text NOT NULL,
	"user_id" text NOT NULL,
	"agent_client_id" text NOT NULL,
	"audience" text NOT NULL,
	"dialect" text NOT NULL,
	"endpoint" text NOT NULL,
	"event_uri" text NOT NULL,
	"state" text NOT NULL,
	"attempts" bigint DEFAULT 0 NOT NULL,
	"next_attempt_ms" bigint NOT NULL,
	"lease_until_ms" bigint,
	"last_error" text,
	"created_at" bigint NOT NULL,
	"delivered_at" bigint
);
--> statement-breakpoint
CREATE TABLE "services" (
	"audience" text PRIMARY KEY NOT NULL,
	"metadata" jsonb NOT NULL,
	"fetched_at" bigint NOT NULL,
	"expires_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "sessions" (
	"id_hash" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"created_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	"expires_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "signing_keys" (
	"kid" text PRIMARY KEY NOT NULL,
	"alg" text NOT NULL,
	"public_jwk" jsonb NOT NULL,
	"private_jwe" text NOT NULL,
	"created_at" bigint NOT NULL,
	"activates_at" bigint NOT NULL,
	"retired_at" bigint,
	"remove_after" bigint
);
--> statement-breakpoint
CREATE TABLE "upstream_identities" (
	"issuer" text NOT NULL,
	"subject" text NOT NULL,
	"user_id" text NOT NULL,
	"created_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	CONSTRAINT "upstream_identities_issuer_subject_pk" PRIMARY KEY("issuer","subject")
);
--> statement-breakpoint
CREATE TABLE "users" (
	"id" text PRIMARY KEY NOT NULL,
	"email" text,
	"email_verified" boolean DEFAULT false NOT NULL,
	"name" text,
	"phone_number" text,
	"phone_number_verified" boolean DEFAULT false NOT NULL,
	"amr" jsonb,
	"acr" text,
	"auth_time" bigint,
	"created_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	"updated_at" bigint DEFAULT floor(extract(epoch from now()))::bigint NOT NULL,
	"removed_at" bigint
);
--> statement-breakpoint
ALTER TABLE "agent_service_client_ids" ADD CONSTRAINT "agent_service_client_ids_agent_client_id_agents_client_id_fk" FOREIGN KEY ("agent_client_id") REFERENCES "public"."agents"("client_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "assertions" ADD CONSTRAINT "assertions_delegation_id_delegations_id_fk" FOREIGN KEY ("delegation_id") REFERENCES "public"."delegations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "connections" ADD CONSTRAINT "connections_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "connections" ADD CONSTRAINT "connections_agent_client_id_agents_client_id_fk" FOREIGN KEY ("agent_client_id") REFERENCES "public"."agents"("client_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "consent_requests" ADD CONSTRAINT "consent_requests_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "consent_requests" ADD CONSTRAINT "consent_requests_agent_client_id_agents_client_id_fk" FOREIGN KEY ("agent_client_id") REFERENCES "public"."agents"("client_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "delegations" ADD CONSTRAINT "delegations_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "delegations" ADD CONSTRAINT "delegations_agent_client_id_agents_client_id_fk" FOREIGN KEY ("agent_client_id") REFERENCES "public"."agents"("client_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "sessions" ADD CONSTRAINT "sessions_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "upstream_identities" ADD CONSTRAINT "upstream_identities_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "assertions_delegation" ON "assertions" USING btree ("delegation_id","issued_at");--> statement-breakpoint
CREATE INDEX "client_assertion_jtis_expiry" ON "client_assertion_jtis" USING btree ("expires_at");--> statement-breakpoint
CREATE INDEX "connections_user" ON "connections" USING btree ("user_id");--> statement-breakpoint
CREATE INDEX "connections_user_agent" ON "connections" USING btree ("user_id","agent_client_id");--> statement-breakpoint
CREATE INDEX "connections_grant" ON "connections" USING btree ("grant_id");--> statement-breakpoint
CREATE INDEX "consent_requests_expiry" ON "consent_requests" USING btree ("expires_at");--> statement-breakpoint
CREATE INDEX "consent_requests_open" ON "consent_requests" USING btree ("user_id","agent_client_id","audience");--> statement-breakpoint
CREATE INDEX "delegations_lookup" ON "delegations" USING btree ("user_id","agent_client_id","audience","created_at");--> statement-breakpoint
CREATE INDEX "delegations_user" ON "delegations" USING btree ("user_id","created_at");--> statement-breakpoint
CREATE INDEX "login_attempts_expiry" ON "login_attempts" USING btree ("expires_at");--> statement-breakpoint
CREATE INDEX "oidc_models_grant" ON "oidc_models" USING btree ("grant_id");--> statement-breakpoint
CREATE INDEX "oidc_models_user_code" ON "oidc_models" USING btree ("model","user_code");--> statement-breakpoint
CREATE INDEX "oidc_models_uid" ON "oidc_models" USING btree ("model","uid");--> statement-breakpoint
CREATE INDEX "oidc_models_expiry" ON "oidc_models" USING btree ("expires_at");--> statement-breakpoint
CREATE INDEX "revocation_events_due" ON "revocation_events" USING btree ("state","next_attempt_ms");--> statement-breakpoint
CREATE INDEX "revocation_events_delegation" ON "revocation_events" USING btree ("delegation_id");--> statement-breakpoint
CREATE INDEX "revocation_events_created" ON "revocation_events" USING btree ("created_at");--> statement-breakpoint
CREATE INDEX "sessions_user" ON "sessions" USING btree ("user_id");--> statement-breakpoint
CREATE INDEX "sessions_expiry" ON "sessions" USING btree ("expires_at");--> statement-breakpoint
CREATE INDEX "signing_keys_activation" ON "signing_keys" USING btree ("activates_at");--> statement-breakpoint
CREATE INDEX "upstream_identities_user" ON "upstream_identities" USING btree ("user_id");