// @ts-check
// The page's side of WS /ws, as JSDoc types: what main_app sends and what the page sends. The server's
// side is the pydantic models in rvchat_common/protocol/page.py; keep the two in step.
// Types only; the other modules import them with `import("./protocol.js").Name`.
// A reply's events all carry `turn`, the id main_app gives each user turn (1, 2, ... per session).

// ------------------------------------------------------------------ shared shapes

/** @typedef {"idle" | "listening" | "user_speaking" | "thinking" | "speaking"} UiState */

/**
 * The turn-taking values main_app uses now (its settings, or what the page last set). `backchannels`: speech
 * over a reply pauses it, and `backchannel_words` (or no words) resume it; `resume_window_ms`: how long after
 * that speech a paused reply waits for words before it resumes.
 * @typedef {object} TurnTaking
 * @property {number} threshold
 * @property {number} min_silence_ms
 * @property {number} min_speech_ms
 * @property {number} resume_window_ms
 */
/** @typedef {TurnTaking & {backchannels: boolean, backchannel_words: string[]}} TurnTakingAll */

/** @typedef {TurnTakingAll & {voice_out: boolean}} SessionConfig */

/** @typedef {{min: number, max: number, step: number}} Range */

/**
 * GET /config (rvchat_app/routes.py).
 * @typedef {object} PageConfig
 * @property {number} input_sample_rate
 * @property {TurnTakingAll} turn_taking
 * @property {Record<keyof TurnTaking, Range> & {text_chars: number}} limits
 * @property {{cue_tones: boolean}} features
 */

/** @typedef {{up: boolean, reason: string | null, label: string}} ServiceState */

/**
 * Which services are up and what still works.
 * @typedef {object} ServicesView
 * @property {Record<string, ServiceState>} services
 * @property {{voice_in: boolean, voice_out: boolean, chat: boolean}} modes
 * @property {string} notice  "" when every service is up
 */

/** @typedef {{message: string, type: string, code: string}} ErrorBody */

/**
 * Per-stage latencies of one turn in ms; only the stages the turn went through.
 * @typedef {object} Latency
 * @property {number} [endpoint_ms]
 * @property {number} [commit_ms]
 * @property {number} [stt_ms]
 * @property {number} [llm_first_token_ms]
 * @property {number} [tts_first_audio_ms]
 * @property {number} [transcript_ms]
 * @property {number} [first_token_ms]
 * @property {number} [total_ms]
 */

/**
 * A stored message, as `conversation` events list them.
 * @typedef {object} StoredMessage
 * @property {number} id
 * @property {"user" | "assistant" | "tool"} role  a tool's result (the call is in the assistant's `meta.tool_calls`)
 * @property {string} content
 * @property {boolean | number} interrupted
 * @property {string} source
 * @property {{latency?: Latency, tool_calls?: unknown[], name?: string} & Record<string, unknown> | null} meta
 */

/**
 * GET /api/conversations lists these.
 * @typedef {object} ConversationSummary
 * @property {string} id
 * @property {string} title
 * @property {number} message_count
 * @property {number} created_at
 * @property {number} updated_at
 */

// ------------------------------------------------------------------ main_app -> page

/**
 * First event of every connection: the session's state and turn-taking values, as the page must show them.
 * @typedef {object} HelloEvent
 * @property {"hello"} type
 * @property {string | null} conversation_id  the one resumed (a `conversation` event with its messages follows)
 * @property {UiState} state
 * @property {number} input_sample_rate
 * @property {SessionConfig} config
 * @property {ServicesView} services
 */
/** @typedef {{type: "notice", message: string}} NoticeEvent */
/** @typedef {{type: "state", state: UiState}} StateEvent */
/** @typedef {{type: "audio_format", sample_rate: number}} AudioFormatEvent */
/** @typedef {{type: "services"} & ServicesView} ServicesEvent */
/** @typedef {{type: "speech_start" | "speech_end", timestamp: number | null}} SpeechEdgeEvent */
/** @typedef {{type: "partial", text: string}} PartialEvent  the utterance in progress (no turn yet) */
/** @typedef {{type: "no_speech"}} NoSpeechEvent */
/** @typedef {{type: "pong", t?: number | string | null}} PongEvent */
/** @typedef {{type: "conversation", id: string | null, title: string, messages: StoredMessage[]}} ConversationEvent */
/** @typedef {{type: "conversation_created", id: string}} ConversationCreatedEvent */
/**
 * The session's values after a change; `echo_guard`: main_app takes the reply's echo out of the mic before
 * its VAD (APP_ECHO_GUARD, not the page's to change).
 * @typedef {{type: "config", echo_guard: boolean} & SessionConfig} ConfigEvent
 */
/** @typedef {{type: "error", source?: string, turn?: number, error: ErrorBody}} ErrorEvent */
/**
 * @typedef {object} TranscriptEvent
 * @property {"transcript"} type
 * @property {number} turn
 * @property {string} text
 * @property {"voice" | "text"} source
 * @property {number | null} message_id
 */
/** @typedef {{type: "reply_start", turn: number, voice: boolean}} ReplyStartEvent */
/** @typedef {{type: "reply_delta", turn: number, text: string}} ReplyDeltaEvent */
/**
 * The assistant calls a tool during the turn; `tool_result` follows, then the reply goes on.
 * @typedef {{type: "tool_call", turn: number, id: string, name: string, arguments: Record<string, unknown> | string}} ToolCallEvent
 */
/** @typedef {{type: "tool_result", turn: number, id: string, name: string, ok: boolean, result: string}} ToolResultEvent */
/**
 * The header of one reply audio chunk; the binary frame right after it holds its PCM16 mono samples.
 * @typedef {object} AudioEvent
 * @property {"audio"} type
 * @property {number} turn
 * @property {number} index  0, 1, ... within the turn
 * @property {string} text  the sentence spoken
 * @property {number} sample_rate
 * @property {number} bytes
 * @property {number} duration_ms
 */
/** @typedef {{type: "audio_end", turn: number, chunks: number, audio_ms: number}} AudioEndEvent */
/** @typedef {{type: "latency", turn: number} & Latency} LatencyEvent */
/**
 * @typedef {object} ReplyEndEvent
 * @property {"reply_end"} type
 * @property {number} turn
 * @property {string} text
 * @property {number | null} [message_id]
 * @property {boolean} interrupted
 * @property {Latency} [latency]
 * @property {boolean} [error]  the reply failed (an `error` event came first)
 */
/**
 * The user started speaking over the reply: pause now, keep the rest; `resume_playback` or `stop_playback`
 * follows once main_app has the speech's words.
 * @typedef {{type: "pause_playback", turn: number}} PausePlaybackEvent
 */
/**
 * The speech was only an acknowledgement (`text`), had no words, or none came in time: play on.
 * @typedef {object} ResumePlaybackEvent
 * @property {"resume_playback"} type
 * @property {number} turn
 * @property {"backchannel" | "no_words" | "timeout"} reason
 * @property {string} text
 * @property {number} paused_ms
 */
/** @typedef {{type: "stop_playback", turn: number, reason: string}} StopPlaybackEvent */
/**
 * A reply cut short: `spoken_text` is what the user heard (what the history keeps). It may arrive after the
 * next turn's first events.
 * @typedef {object} InterruptedEvent
 * @property {"interrupted"} type
 * @property {number} turn
 * @property {string} spoken_text
 * @property {string} full_text
 * @property {string[]} cancelled  the services whose work was cancelled ("llm", "tts")
 * @property {number} played_ms
 * @property {number | null} message_id
 * @property {string} reason
 */

/**
 * @typedef {HelloEvent | NoticeEvent | StateEvent | AudioFormatEvent | ServicesEvent | SpeechEdgeEvent
 *   | PartialEvent | NoSpeechEvent | PongEvent | ConversationEvent | ConversationCreatedEvent | ConfigEvent
 *   | ErrorEvent | TranscriptEvent | ReplyStartEvent | ReplyDeltaEvent | ToolCallEvent | ToolResultEvent
 *   | AudioEvent | AudioEndEvent
 *   | LatencyEvent | ReplyEndEvent | PausePlaybackEvent | ResumePlaybackEvent | StopPlaybackEvent
 *   | InterruptedEvent} ServerEvent
 */

// ------------------------------------------------------------------ page -> main_app (besides PCM16 16 kHz mic frames)

/** @typedef {{type: "text", text: string, voice?: boolean}} TextMessage */
/**
 * A change the user made; only the keys given change.
 * @typedef {{type: "config"} & Partial<SessionConfig>} ConfigMessage
 */
/**
 * How much of a turn's audio the page has played: after each chunk, at reply_end (done), and in answer to
 * pause_playback and stop_playback (main_app keeps what was heard by it).
 * @typedef {{type: "playback", turn: number, played_ms: number, done?: boolean}} PlaybackMessage
 */
/** @typedef {{type: "interrupt"} | {type: "new_conversation"}} ControlMessage */
/** @typedef {{type: "open_conversation", id: string}} OpenConversationMessage */
/** @typedef {{type: "ping", t?: number | string | null}} PingMessage */

/**
 * @typedef {TextMessage | ConfigMessage | PlaybackMessage | ControlMessage | OpenConversationMessage
 *   | PingMessage} ClientEvent
 */

export {};
