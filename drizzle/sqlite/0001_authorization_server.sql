CREATE TABLE `agent_service_client_ids` (
	`agent_client_id` text NOT NULL,
	`audience` text NOT NULL,
	`client_id` text NOT NULL,
	PRIMARY KEY(`agent_client_id`, `audience`),
	FOREIGN KEY (`agent_client_id`) REFERENCES `agents`(`client_id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE TABLE `assertions` (
	`jti` text PRIMARY KEY NOT NULL,
	`delegation_id` text NOT NULL,
	`user_id` text NOT NULL,
	`agent_client_id` text NOT NULL,
	`audience` text NOT NULL,
	`resources` text NOT NULL,
	`scope` text NOT NULL,
	`kid` text NOT NULL,
	`issued_at` integer NOT NULL,
	`expires_at` integer NOT NULL,
	FOREIGN KEY (`delegation_id`) REFERENCES `delegations`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `assertions_delegation` ON `assertions` (`delegation_id`,`issued_at`);--> statement-breakpoint
CREATE TABLE `client_assertion_jtis` (
	`client_id` text NOT NULL,
	`jti` text NOT NULL,
	`expires_at` integer NOT NULL,
	PRIMARY KEY(`client_id`, `jti`)
);
--> statement-breakpoint
CREATE INDEX `client_assertion_jtis_expiry` ON `client_assertion_jtis` (`expires_at`);--> statement-breakpoint
CREATE TABLE `connections` (
	`id` text PRIMARY KEY NOT NULL,
	`user_id` text NOT NULL,
	`agent_client_id` text NOT NULL,
	`grant_id` text,
	`scope` text NOT NULL,
	`created_at` integer DEFAULT (unixepoch()) NOT NULL,
	`last_connected_at` integer DEFAULT (unixepoch()) NOT NULL,
	`disconnected_at` integer,
	FOREIGN KEY (`user_id`) REFERENCES `users`(`id`) ON UPDATE no action ON DELETE cascade,
	FOREIGN KEY (`agent_client_id`) REFERENCES `agents`(`client_id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `connections_user` ON `connections` (`user_id`);--> statement-breakpoint
CREATE INDEX `connections_user_agent` ON `connections` (`user_id`,`agent_client_id`);--> statement-breakpoint
CREATE INDEX `connections_grant` ON `connections` (`grant_id`);--> statement-breakpoint
CREATE TABLE `consent_requests` (
	`id` text PRIMARY KEY NOT NULL,
	`user_id` text NOT NULL,
	`agent_client_id` text NOT NULL,
	`audience` text NOT NULL,
	`resources` text NOT NULL,
	`scope` text NOT NULL,
	`created_at` integer DEFAULT (unixepoch()) NOT NULL,
	`expires_at` integer NOT NULL,
	`outcome` text,
	`delegation_id` text,
	FOREIGN KEY (`user_id`) REFERENCES `users`(`id`) ON UPDATE no action ON DELETE cascade,
	FOREIGN KEY (`agent_client_id`) REFERENCES `agents`(`client_id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `consent_requests_expiry` ON `consent_requests` (`expires_at`);--> statement-breakpoint
CREATE TABLE `delegations` (
	`id` text PRIMARY KEY NOT NULL,
	`user_id` text NOT NULL,
	`agent_client_id` text NOT NULL,
	`audience` text NOT NULL,
	`resources` text NOT NULL,
	`scope` text NOT NULL,
	`mode` text NOT NULL,
	`expires_at` integer,
	`service_name` text,
	`service_logo_uri` text,
	`service_agent_auth` text,
	`uses` integer DEFAULT 0 NOT NULL,
	`last_used_at` integer,
	`consumed_at` integer,
	`revoked_at` integer,
	`created_at` integer DEFAULT (unixepoch()) NOT NULL,
	FOREIGN KEY (`user_id`) REFERENCES `users`(`id`) ON UPDATE no action ON DELETE cascade,
	FOREIGN KEY (`agent_client_id`) REFERENCES `agents`(`client_id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `delegations_lookup` ON `delegations` (`user_id`,`agent_client_id`,`audience`);--> statement-breakpoint
CREATE INDEX `delegations_user` ON `delegations` (`user_id`,`created_at`);--> statement-breakpoint
CREATE TABLE `oidc_models` (
	`model` text NOT NULL,
	`id` text NOT NULL,
	`payload` text NOT NULL,
	`grant_id` text,
	`user_code` text,
	`uid` text,
	`expires_at` integer,
	`consumed_at` integer,
	PRIMARY KEY(`model`, `id`)
);
--> statement-breakpoint
CREATE INDEX `oidc_models_grant` ON `oidc_models` (`grant_id`);--> statement-breakpoint
CREATE INDEX `oidc_models_user_code` ON `oidc_models` (`model`,`user_code`);--> statement-breakpoint
CREATE INDEX `oidc_models_uid` ON `oidc_models` (`model`,`uid`);--> statement-breakpoint
CREATE INDEX `oidc_models_expiry` ON `oidc_models` (`expires_at`);--> statement-breakpoint
CREATE TABLE `services` (
	`audience` text PRIMARY KEY NOT NULL,
	`metadata` text NOT NULL,
	`fetched_at` integer NOT NULL,
	`expires_at` integer NOT NULL
);
--> statement-breakpoint
ALTER TABLE `agents` ADD `allowed_audiences` text;