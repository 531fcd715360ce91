DROP INDEX `delegations_lookup`;--> statement-breakpoint
CREATE INDEX `delegations_lookup` ON `delegations` (`user_id`,`agent_client_id`,`audience`,`created_at`);