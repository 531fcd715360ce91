CREATE TABLE `revocation_events` (
	`id` text PRIMARY KEY NOT NULL,
	`delegation_id` text NOT NULL,
	`user_id` text NOT NULL,
	`agent_client_id` text NOT NULL,
	`audience` text NOT NULL,
	`dialect` text NOT NULL,
	`endpoint` text NOT NULL,
	`event_uri` text NOT NULL,
	`state` text NOT NULL,
	`attempts` integer DEFAULT 0 NOT NULL,
	`next_attempt_ms` integer NOT NULL,
	`lease_until_ms` integer,
	`last_error` text,
	`created_at` integer NOT NULL,
	`delivered_at` integer
);
--> statement-breakpoint
CREATE INDEX `revocation_events_due` ON `revocation_events` (`state`,`next_attempt_ms`);--> statement-breakpoint
CREATE INDEX `revocation_events_delegation` ON `revocation_events` (`delegation_id`);--> statement-breakpoint
CREATE INDEX `revocation_events_created` ON `revocation_events` (`created_at`);--> statement-breakpoint
ALTER TABLE `agents` ADD `removed_at` integer;--> statement-breakpoint
ALTER TABLE `users` ADD `removed_at` integer;