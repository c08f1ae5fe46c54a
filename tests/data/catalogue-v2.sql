BEGIN TRANSACTION;
CREATE TABLE accounts (
	account_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	name VARCHAR(64) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	is_admin INTEGER NOT NULL, 
	credential VARCHAR(64) NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	UNIQUE (name), 
	UNIQUE (credential)
);
INSERT INTO "accounts" VALUES(1,'admin','scrypt$32768$8$1$Yxcy73VTTb16dwt8iAQXgQ$Znl4BIa7YDadt8iaHHtLoXoFDIkW9KEAlZAX7VhRclQGrQ8C5027Z07aQFx7b7CLWUuaxNPFrqLF-h0qL7tv3Q',1,'ZwYsvCvBxt3VOdA5T_zHU-B7VEJ2m4j-',1700000000,1700000000);
CREATE TABLE agent_keys (
	key_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	name VARCHAR(64) NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	revoked BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	max_gatherers INTEGER DEFAULT '1' NOT NULL, 
	takeover_gather_id INTEGER, 
	UNIQUE (name), 
	UNIQUE (key_hash)
);
INSERT INTO "agent_keys" VALUES(1,'school-1','2c6d4f05c4af365e91a3490982a6a3e7de286b4013e019fd9636d9096dbb768f',0,1700000000,2,NULL);
CREATE TABLE cameras (
	camera_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	gather_id INTEGER NOT NULL, 
	camera_name VARCHAR(128) NOT NULL, 
	image_id INTEGER NOT NULL, 
	stream_prop INTEGER NOT NULL, 
	stream_url VARCHAR(1024) NOT NULL, 
	stream_mp4 VARCHAR(1024) NOT NULL, 
	device_ip VARCHAR(255) NOT NULL, 
	device_user VARCHAR(128) NOT NULL, 
	device_pass VARCHAR(255) NOT NULL, 
	device_cmd_port INTEGER NOT NULL, 
	device_mirror INTEGER NOT NULL, 
	device_osd INTEGER NOT NULL, 
	device_twice INTEGER NOT NULL, 
	device_show INTEGER NOT NULL, 
	started INTEGER NOT NULL, 
	status INTEGER NOT NULL, 
	clicks BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	FOREIGN KEY(gather_id) REFERENCES gatherers (gather_id) ON DELETE CASCADE
);
INSERT INTO "cameras" VALUES(1,1,'一班',2,1,'','/videos/a.mp4','','','',8000,0,0,0,1,1,0,0,1700000060,1700000060);
INSERT INTO "cameras" VALUES(3,2,'二班',0,1,'','/videos/a.mp4','','','',8000,0,0,0,1,1,0,0,1700000060,1700000060);
CREATE TABLE courses (
	course_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	camera_id INTEGER NOT NULL, 
	repeat_id INTEGER NOT NULL, 
	week_id INTEGER NOT NULL, 
	start_sec INTEGER NOT NULL, 
	elapse_sec INTEGER NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	FOREIGN KEY(camera_id) REFERENCES cameras (camera_id) ON DELETE CASCADE
);
INSERT INTO "courses" VALUES(1,1,2,1,28800,2700,1700000060,1700000060);
INSERT INTO "courses" VALUES(2,3,2,3,36000,2700,1700000060,1700000060);
CREATE TABLE gatherers (
	gather_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	mac_addr VARCHAR(64) NOT NULL, 
	key_id INTEGER, 
	ip_addr VARCHAR(64) NOT NULL, 
	name_pc VARCHAR(128) NOT NULL, 
	name_set VARCHAR(128) NOT NULL, 
	os_name VARCHAR(128) NOT NULL, 
	main_rate INTEGER NOT NULL, 
	sub_rate INTEGER NOT NULL, 
	auto_dvr INTEGER NOT NULL, 
	auto_fds INTEGER NOT NULL, 
	slice_val INTEGER NOT NULL, 
	inter_val INTEGER NOT NULL, 
	snap_val INTEGER NOT NULL, 
	status INTEGER NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	UNIQUE (mac_addr), 
	FOREIGN KEY(key_id) REFERENCES agent_keys (key_id)
);
INSERT INTO "gatherers" VALUES(1,'02:00:00:00:aa:01',1,'10.0.0.5','pc-1','pc-1','Linux',1024,512,0,1,0,0,2,1,1700000000,1700000000);
INSERT INTO "gatherers" VALUES(2,'02:00:00:00:bb:02',1,'10.0.0.6','pc-2','pc-2','Linux',1024,512,0,1,0,0,2,1,1700000060,1700000060);
CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO "meta" VALUES('schema_version','2');
INSERT INTO "meta" VALUES('signing_key','a2c72a45f373317b485002fd3b711fa16069fa459dc24b0c453c67a22a3ccfb6');
CREATE TABLE records (
	record_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	gather_id INTEGER NOT NULL, 
	camera_id INTEGER NOT NULL, 
	file_fdfs VARCHAR(1024) NOT NULL, 
	image_fdfs VARCHAR(1024) NOT NULL, 
	file_size BIGINT NOT NULL, 
	duration INTEGER NOT NULL, 
	clicks BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	FOREIGN KEY(camera_id) REFERENCES cameras (camera_id) ON DELETE CASCADE
);
INSERT INTO "records" VALUES(1,1,1,'/files/records/1/20231114/a.mp4','/files/posters/1/a.jpg',1048576,600,1,1700000240,1700000240);
INSERT INTO "records" VALUES(2,2,3,'/files/records/3/20231114/b.mp4','',2048,30,0,1700000840,1700000840);
CREATE TABLE sessions (
	session_hash VARCHAR(64) NOT NULL, 
	account_id INTEGER NOT NULL, 
	expires BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	PRIMARY KEY (session_hash), 
	FOREIGN KEY(account_id) REFERENCES accounts (account_id) ON DELETE CASCADE
);
INSERT INTO "sessions" VALUES('5c0b27f0d7a18ffd1f50610a0d70d364cd4dbfd5c7458c32cf8ca161301b1f74',1,1700004440,1700000840);
CREATE TABLE snapshots (
	image_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	camera_id INTEGER NOT NULL, 
	image_fdfs VARCHAR(1024) NOT NULL, 
	created BIGINT NOT NULL, 
	FOREIGN KEY(camera_id) REFERENCES cameras (camera_id) ON DELETE CASCADE
);
INSERT INTO "snapshots" VALUES(1,1,'/files/snapshots/1/old.jpg',1700000120);
INSERT INTO "snapshots" VALUES(2,1,'/files/snapshots/1/new.jpg',1700000180);
CREATE INDEX ix_sessions_account_id ON sessions (account_id);
CREATE INDEX ix_gatherers_key_id ON gatherers (key_id);
CREATE INDEX ix_cameras_gather_id ON cameras (gather_id);
CREATE INDEX ix_snapshots_camera_id ON snapshots (camera_id);
CREATE INDEX ix_records_camera_id ON records (camera_id);
CREATE INDEX courses_by_camera_day ON courses (camera_id, week_id);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('accounts',1);
INSERT INTO "sqlite_sequence" VALUES('agent_keys',1);
INSERT INTO "sqlite_sequence" VALUES('gatherers',2);
INSERT INTO "sqlite_sequence" VALUES('cameras',3);
INSERT INTO "sqlite_sequence" VALUES('courses',2);
INSERT INTO "sqlite_sequence" VALUES('snapshots',2);
INSERT INTO "sqlite_sequence" VALUES('records',2);
COMMIT;
