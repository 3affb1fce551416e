/** The test's Temporal workflow (bundled by the worker): the briefing's last two steps through `reviveRecovery()`. */

import { proxyActivities } from "@temporalio/workflow";

import { reviveRecovery } from "../../src/temporal-workflow.js";

export interface BriefingInput {
  runId: string;
  connectionId: string;
}

export interface BriefingActivities {
  registerBriefing(input: BriefingInput): Promise<void>;
  prepareBrief(input: BriefingInput): Promise<{ pages: number }>;
  sendBrief(input: BriefingInput): Promise<{ id: string }>;
}

const activities = proxyActivities<BriefingActivities>({
  startToCloseTimeout: "2 minutes",
  retry: { initialInterval: "1 second", maximumAttempts: 5 },
});

export async function briefing(input: BriefingInput): Promise<{ prepared: { pages: number }; sent: { id: string }; resumes: number }> {
  const revive = reviveRecovery();
  await activities.registerBriefing(input);
  const prepared = await revive.run(() => activities.prepareBrief(input));
  const sent = await revive.run(() => activities.sendBrief(input));
  return { prepared, sent, resumes: revive.resumes };
}
